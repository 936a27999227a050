//! Raw frames for exact comparison: a safetensors file holding the tensor `video`, f32
//! `[F, H, W, 3]` in 0..=1 (u8 is accepted on input), with the frame rate in the metadata
//! key `fps`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use himmel_core::Video;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::MediaError;
use crate::output::write_file;

const FORMAT: &str = "safetensors";
/// Name of the frames tensor.
pub const TENSOR_NAME: &str = "video";
/// Metadata key holding the frame rate.
pub const FPS_KEY: &str = "fps";

/// Reads the `video` tensor; `default_fps` is used when the file records no frame rate.
pub(crate) fn read(path: &Path, default_fps: f64) -> Result<Video, MediaError> {
    let bytes = fs::read(path).map_err(|e| MediaError::io(path, e))?;
    let malformed = |reason: String| MediaError::malformed(path, FORMAT, reason);
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| malformed(e.to_string()))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| malformed(e.to_string()))?;
    let view = tensors
        .tensor(TENSOR_NAME)
        .map_err(|_| malformed(format!("it has no tensor named `{TENSOR_NAME}`")))?;
    let shape = view.shape().to_vec();
    let frames = match view.dtype() {
        Dtype::F32 => {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<_>>();
            Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?
        }
        Dtype::U8 => Tensor::from_vec(view.data().to_vec(), shape.as_slice(), &Device::Cpu)?,
        other => {
            return Err(malformed(format!(
                "tensor `{TENSOR_NAME}` is {other:?}; expected F32 or U8"
            )));
        }
    };
    let fps = match metadata.metadata().as_ref().and_then(|m| m.get(FPS_KEY)) {
        Some(text) => text
            .parse::<f64>()
            .map_err(|_| malformed(format!("metadata `{FPS_KEY}` is {text:?}, not a number")))?,
        None => default_fps,
    };
    Ok(Video::new(frames, fps)?)
}

/// Writes the frames as f32 in 0..=1 with the frame rate in the metadata.
pub(crate) fn write(video: &Video, path: &Path) -> Result<(), MediaError> {
    let values = video.to_f32()?.flatten_all()?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![video.num_frames(), video.height(), video.width(), 3];
    let encode_error = |e: safetensors::SafeTensorError| MediaError::Encode {
        format: FORMAT,
        reason: e.to_string(),
    };
    let view = TensorView::new(Dtype::F32, shape, &bytes).map_err(encode_error)?;
    let metadata = HashMap::from([(FPS_KEY.to_string(), video.fps().to_string())]);
    let serialized =
        safetensors::serialize([(TENSOR_NAME, view)], Some(metadata)).map_err(encode_error)?;
    write_file(path, |file| {
        file.write_all(&serialized)
            .map_err(|e| MediaError::io(path, e))
    })
}
