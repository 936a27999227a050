//! Training checkpoints: weights, their moving average and the optimizer's moments in one
//! safetensors file per save (`checkpoint-0001000.safetensors`), with the stage and step in its
//! metadata. Files are written beside their final name and renamed, so a run stopped while
//! saving leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use himmel_models::safetensors_header::read_header;

use crate::ema::Ema;
use crate::error::TrainError;
use crate::optim::AdamW;

const PREFIX: &str = "checkpoint-";
const EXTENSION: &str = ".safetensors";
/// Metadata key of the step the optimizer's moments started at (absent in older checkpoints: 0).
const MOMENTS_FROM: &str = "moments_from";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `tensors` with `metadata` to `path` atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let partial = path.with_extension("partial");
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|error| {
        TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: error.to_string(),
        }
    })?;
    std::fs::write(&partial, bytes).map_err(io(&partial))?;
    std::fs::rename(&partial, path).map_err(io(path))
}

/// Named tensors and string metadata, as a safetensors file holds them.
pub type TensorsAndMetadata = (HashMap<String, Tensor>, HashMap<String, String>);

/// Reads every tensor of a safetensors file and its metadata; the error says what is wrong.
pub fn read_safetensors(path: &Path) -> Result<TensorsAndMetadata, TrainError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let corrupt = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|error| corrupt(format!("not a valid safetensors file ({error})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|error| corrupt(format!("unreadable tensors ({error})")))?;
    Ok((tensors, metadata))
}

/// Reads only the string metadata of a safetensors file: its header, not its tensors.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, TrainError> {
    let (_, header) = read_header(path).map_err(|message| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file ({message})"),
    })?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// The newest checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let step = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| {
                name.strip_prefix(PREFIX)?
                    .strip_suffix(EXTENSION)?
                    .parse()
                    .ok()
            });
        if let Some(step) = step
            && newest.as_ref().is_none_or(|(best, _)| step > *best)
        {
            newest = Some((step, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// Saves the state after `step` steps of `stage` into `dir`; returns the file.
pub fn save(
    dir: &Path,
    stage: &str,
    step: u64,
    optimizer: &AdamW,
    ema: &Ema,
) -> Result<PathBuf, TrainError> {
    let mut tensors = HashMap::new();
    for slot in &optimizer.slots {
        tensors.insert(format!("param.{}", slot.name), slot.var.as_tensor().clone());
        tensors.insert(format!("first.{}", slot.name), slot.first.clone());
        tensors.insert(format!("second.{}", slot.name), slot.second.clone());
    }
    for (name, average) in &ema.averages {
        tensors.insert(format!("ema.{name}"), average.clone());
    }
    let metadata = HashMap::from([
        ("stage".to_string(), stage.to_string()),
        ("step".to_string(), step.to_string()),
        (MOMENTS_FROM.to_string(), optimizer.origin.to_string()),
    ]);
    let path = dir.join(format!("{PREFIX}{step:07}{EXTENSION}"));
    write_safetensors(&path, &tensors, metadata)?;
    Ok(path)
}

/// Restores weights, moments (and where they started) and averages from a checkpoint of
/// `stage`; returns its step.
pub fn restore(
    path: &Path,
    stage: &str,
    optimizer: &mut AdamW,
    ema: &mut Ema,
) -> Result<u64, TrainError> {
    let (tensors, metadata) = read_safetensors(path)?;
    let corrupt = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    if metadata.get("stage").map(String::as_str) != Some(stage) {
        return Err(corrupt(format!(
            "it is not a {stage} checkpoint (stage {:?})",
            metadata.get("stage")
        )));
    }
    let step = metadata
        .get("step")
        .and_then(|step| step.parse().ok())
        .ok_or_else(|| corrupt("its metadata has no step".into()))?;
    optimizer.origin = match metadata.get(MOMENTS_FROM) {
        Some(origin) => origin
            .parse()
            .map_err(|_| corrupt(format!("its {MOMENTS_FROM} is not a step: {origin:?}")))?,
        None => 0,
    };
    let take = |key: String, like: &Tensor| -> Result<Tensor, TrainError> {
        let tensor = tensors
            .get(&key)
            .ok_or_else(|| corrupt(format!("tensor {key} is missing")))?;
        if tensor.dims() != like.dims() {
            return Err(corrupt(format!(
                "tensor {key} has shape {:?}, the model needs {:?}",
                tensor.dims(),
                like.dims()
            )));
        }
        Ok(tensor.to_device(like.device())?.to_dtype(like.dtype())?)
    };
    for slot in &mut optimizer.slots {
        slot.var
            .set(&take(format!("param.{}", slot.name), slot.var.as_tensor())?)?;
        slot.first = take(format!("first.{}", slot.name), &slot.first)?;
        slot.second = take(format!("second.{}", slot.name), &slot.second)?;
    }
    for (name, average) in &mut ema.averages {
        *average = take(format!("ema.{name}"), average)?;
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_reads_without_the_tensors_and_a_cut_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let tensors = HashMap::from([(
            "w".to_string(),
            Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]);
        let metadata = HashMap::from([("step".to_string(), "42".to_string())]);
        write_safetensors(&path, &tensors, metadata.clone()).unwrap();
        assert_eq!(read_safetensors_metadata(&path).unwrap(), metadata);

        let bytes = std::fs::read(&path).unwrap();
        for cut in [4, 20] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let error = read_safetensors_metadata(&path).unwrap_err().to_string();
            assert!(error.contains("not a valid safetensors file"), "{error}");
        }
    }
}
