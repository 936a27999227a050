//! Finding a model's parts on disk: a diffusers folder (`model_index.json` and one subfolder
//! per component, weights as single or sharded safetensors). Single-file checkpoints (original
//! Wan and ComfyUI layouts) are detected and refused with a clear message until they land.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::PipelineError;

/// Reads and parses a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, PipelineError> {
    let text = fs::read_to_string(path).map_err(|e| PipelineError::load(path, e))?;
    serde_json::from_str(&text).map_err(|e| PipelineError::load(path, format!("invalid JSON: {e}")))
}

/// The pipeline class a diffusers folder declares in `model_index.json`.
pub fn pipeline_class(root: &Path) -> Result<String, PipelineError> {
    if root.is_file() {
        let reason = "single-file checkpoints (original Wan or ComfyUI files) are not supported yet; \
                      pass a diffusers folder (one with model_index.json)";
        return Err(PipelineError::load(root, reason));
    }
    if !root.is_dir() {
        return Err(PipelineError::load(root, "no such file or folder"));
    }
    let index = root.join("model_index.json");
    if !index.is_file() {
        let mut found: Vec<String> = fs::read_dir(root)
            .map_err(|e| PipelineError::load(root, e))?
            .filter_map(|entry| {
                entry
                    .ok()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        found.sort();
        found.truncate(8);
        let reason = format!(
            "not a diffusers model folder: no model_index.json (found: {})",
            found.join(", ")
        );
        return Err(PipelineError::load(root, reason));
    }
    let value: serde_json::Value = read_json(&index)?;
    value
        .get("_class_name")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| PipelineError::load(&index, "no _class_name"))
}

/// The safetensors files holding one component's weights: the shards an
/// `*.safetensors.index.json` lists, or the folder's single `.safetensors` file.
pub fn weight_files(component: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    let entries: Vec<PathBuf> = fs::read_dir(component)
        .map_err(|e| PipelineError::load(component, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if let Some(index) = entries
        .iter()
        .find(|p| name(p).ends_with(".safetensors.index.json"))
    {
        let value: serde_json::Value = read_json(index)?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| PipelineError::load(index, "no weight_map"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return shards
            .into_iter()
            .map(|shard| {
                let path = component.join(shard);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(PipelineError::load(
                        &path,
                        "shard listed in the index is missing",
                    ))
                }
            })
            .collect();
    }
    let mut files: Vec<PathBuf> = entries
        .into_iter()
        .filter(|p| name(p).ends_with(".safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(PipelineError::load(
            component,
            "no .safetensors weights (PyTorch .bin files are not read)",
        ));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_what_it_found() {
        let dir = std::env::temp_dir().join(format!("himmel-layout-{}", std::process::id()));
        fs::create_dir_all(dir.join("transformer")).unwrap();
        fs::write(dir.join("notes.txt"), "x").unwrap();
        let error = pipeline_class(&dir).unwrap_err().to_string();
        assert!(
            error.contains("no model_index.json") && error.contains("notes.txt"),
            "{error}"
        );
        let error = weight_files(&dir.join("transformer"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no .safetensors"), "{error}");
        fs::write(
            dir.join("transformer/diffusion_pytorch_model.safetensors.index.json"),
            r#"{"weight_map": {"a": "part-1.safetensors"}}"#,
        )
        .unwrap();
        let error = weight_files(&dir.join("transformer"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("part-1.safetensors") && error.contains("missing"),
            "{error}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
