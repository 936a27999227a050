//! Safetensors files read one tensor (or a few rows) at a time with plain file reads instead of a
//! memory map. A mapped file's pages count in the process's memory for as long as the map
//! lives, so loading a 2.7 GB transformer through one held 5.4 GB at its peak; read this way,
//! the file stays in the page cache (which the system can drop) and the process holds only the
//! tensors it made.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use himmel_models::safetensors_header::read_header;
use safetensors::tensor::TensorInfo;

use crate::PipelineError;

/// Where one tensor's bytes are.
struct Entry {
    /// The file holding it.
    path: PathBuf,
    /// Offset of its first byte in that file.
    start: u64,
    info: TensorInfo,
}

/// The tensors of one or more safetensors files (shards of one model part), by name.
pub struct SafetensorsFiles {
    entries: HashMap<String, Entry>,
}

impl SafetensorsFiles {
    /// Reads the headers of `paths`; a later file's tensor replaces an earlier one of the same
    /// name. Errors name the file that is not valid safetensors.
    pub fn open(paths: &[PathBuf]) -> Result<Self, PipelineError> {
        let mut entries = HashMap::new();
        for path in paths {
            let (data_start, metadata) =
                read_header(path).map_err(|e| PipelineError::load(path, e))?;
            for (name, info) in metadata.tensors() {
                let entry = Entry {
                    path: path.clone(),
                    start: data_start + info.data_offsets.0 as u64,
                    info: info.clone(),
                };
                entries.insert(name, entry);
            }
        }
        Ok(Self { entries })
    }

    /// Every tensor's name and shape.
    pub fn shapes(&self) -> impl Iterator<Item = (&String, &[usize])> {
        self.entries
            .iter()
            .map(|(name, entry)| (name, entry.info.shape.as_slice()))
    }

    /// Tensor `name` as stored, on `device`, read straight into the tensor's buffer.
    pub fn tensor(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let entry = self.entry(name)?;
        let mut file = File::open(&entry.path).map_err(|e| in_file(&entry.path, e))?;
        file.seek(SeekFrom::Start(entry.start))
            .map_err(|e| in_file(&entry.path, e))?;
        let file = &mut file;
        match stored_dtype(entry)? {
            DType::BF16 => values::<half::bf16>(file, entry, device),
            DType::F16 => values::<half::f16>(file, entry, device),
            DType::F32 => values::<f32>(file, entry, device),
            DType::F64 => values::<f64>(file, entry, device),
            DType::U8 => values::<u8>(file, entry, device),
            DType::U32 => values::<u32>(file, entry, device),
            DType::I64 => values::<i64>(file, entry, device),
            other => candle_core::bail!("{name}: {other:?} tensors are not supported"),
        }
    }

    /// Rows `ids` of the 2-D tensor `name`, `[ids.len(), columns]` as stored, reading only them.
    pub fn rows(&self, name: &str, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let entry = self.entry(name)?;
        let &[rows, columns] = entry.info.shape.as_slice() else {
            candle_core::bail!("{name} has shape {:?}, not 2 dimensions", entry.info.shape);
        };
        let dtype = stored_dtype(entry)?;
        let row_bytes = columns * dtype.size_in_bytes();
        let mut picked = Vec::with_capacity(ids.len() * row_bytes);
        let mut file = File::open(&entry.path).map_err(|e| in_file(&entry.path, e))?;
        for &id in ids {
            if id as usize >= rows {
                candle_core::bail!("row {id} is past the {rows} rows of {name}");
            }
            let start = entry.start + (id as usize * row_bytes) as u64;
            file.seek(SeekFrom::Start(start))
                .map_err(|e| in_file(&entry.path, e))?;
            let from = picked.len();
            picked.resize(from + row_bytes, 0);
            file.read_exact(&mut picked[from..])
                .map_err(|e| in_file(&entry.path, e))?;
        }
        Tensor::from_raw_buffer(&picked, dtype, &[ids.len(), columns], device)
    }

    fn entry(&self, name: &str) -> candle_core::Result<&Entry> {
        self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })
    }
}

/// A [`SafetensorsFiles`] shared by the VarBuilders made from it.
pub struct SharedFiles(pub Arc<SafetensorsFiles>);

impl SimpleBackend for SharedFiles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.tensor(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.entries.contains_key(name)
    }
}

fn stored_dtype(entry: &Entry) -> candle_core::Result<DType> {
    DType::try_from(entry.info.dtype)
}

/// The values of `entry` read from `file` (positioned at its first byte) into a tensor.
fn values<T: WithDType>(
    file: &mut File,
    entry: &Entry,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let shape = entry.info.shape.as_slice();
    if cfg!(target_endian = "big") {
        candle_core::bail!("safetensors files are little-endian; this machine is not");
    }
    let count = shape.iter().product::<usize>();
    let mut values = vec![T::zero(); count];
    // SAFETY: `T` is one of candle's plain number types, for which every byte pattern of its size
    // is a value; the slice covers exactly the vector's initialised elements.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), count * size_of::<T>())
    };
    file.read_exact(bytes)
        .map_err(|e| in_file(&entry.path, e))?;
    Tensor::from_vec(values, shape, device)
}

fn in_file(path: &Path, error: std::io::Error) -> candle_core::Error {
    candle_core::Error::from(error).with_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(tensors: &[(&str, Tensor)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(name, tensor)| (name.to_string(), tensor.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_tensors_and_rows_as_written() {
        let table = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((6, 4))
            .unwrap();
        let half = table.to_dtype(DType::BF16).unwrap();
        let (_dir, path) = written(&[("table", table.clone()), ("half", half.clone())]);
        let files = SafetensorsFiles::open(&[path]).unwrap();
        let read = files.tensor("table", &Device::Cpu).unwrap();
        assert_eq!(
            read.to_vec2::<f32>().unwrap(),
            table.to_vec2::<f32>().unwrap()
        );
        let rows = files.rows("half", &[5, 0, 5], &Device::Cpu).unwrap();
        assert_eq!(rows.dtype(), DType::BF16);
        let expected = table
            .index_select(&Tensor::new(&[5u32, 0, 5], &Device::Cpu).unwrap(), 0)
            .unwrap();
        let rows = rows.to_dtype(DType::F32).unwrap();
        assert_eq!(
            rows.to_vec2::<f32>().unwrap(),
            expected.to_vec2::<f32>().unwrap()
        );
        assert!(files.rows("half", &[6], &Device::Cpu).is_err());
        assert!(files.tensor("missing", &Device::Cpu).is_err());
    }

    #[test]
    fn truncated_and_garbled_files_are_errors_naming_the_problem() {
        let (dir, path) = written(&[("x", Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap())]);
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let error = SafetensorsFiles::open(&[cut]).err().unwrap().to_string();
        assert!(error.contains("truncated"), "{error}");
        let garbled = dir.path().join("garbled.safetensors");
        std::fs::write(&garbled, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
        let error = SafetensorsFiles::open(&[garbled])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("header"), "{error}");
        // A shape whose size overflows.
        let header =
            br#"{"x":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#;
        let huge = dir.path().join("huge.safetensors");
        let bytes = [&(header.len() as u64).to_le_bytes()[..], header, &[0u8; 4]].concat();
        std::fs::write(&huge, bytes).unwrap();
        let error = SafetensorsFiles::open(&[huge]).err().unwrap().to_string();
        assert!(error.contains("overflow"), "{error}");
    }
}
