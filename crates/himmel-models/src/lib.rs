//! Model architectures, one folder per family. Models load through candle `VarBuilder`s whose
//! keys spell the checkpoint's names, and know nothing of files other than their weights.
#![deny(missing_docs)]

pub mod kernels;
pub mod mini;
pub mod ops;
pub mod safetensors_header;
pub mod umt5;
pub mod wan;
