//! The header of a safetensors file, read without its tensors: where the data starts, each
//! tensor's type, shape and offsets, and the file's string metadata.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use safetensors::tensor::Metadata;

/// Largest header a file may declare (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// The offset of the data and the parsed header of the safetensors file at `path`: parsing
/// checks each tensor's offsets against its shape and type, this the file's length.
pub fn read_header(path: &Path) -> Result<(u64, Metadata), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let length = file.metadata().map_err(|e| e.to_string())?.len();
    let mut size = [0u8; 8];
    file.read_exact(&mut size)
        .map_err(|_| "is too short for a safetensors header".to_string())?;
    let size = u64::from_le_bytes(size);
    if size > MAX_HEADER || 8 + size > length {
        return Err(format!(
            "declares a {size}-byte safetensors header in a {length}-byte file"
        ));
    }
    let mut header = vec![0u8; size as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|e| format!("has an invalid safetensors header: {e}"))?;
    let data_end = metadata
        .tensors()
        .values()
        .map(|info| info.data_offsets.1 as u64)
        .max()
        .unwrap_or(0);
    let tensors_end = (8 + size).saturating_add(data_end);
    if tensors_end > length {
        return Err(format!(
            "is truncated: its tensors end at byte {tensors_end}, the file at {length}"
        ));
    }
    Ok((8 + size, metadata))
}
