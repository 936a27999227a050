//! A weight source for candle's builders that keeps some weights fixed and trains the rest:
//! the denoiser stage over a trained autoencoder, a decoder fine-tuned over a fixed encoder.

use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarMap};

/// Weights for a model's builder: the named `frozen` ones fixed (a trained stage's), every
/// other one a variable of `trained`.
pub struct FrozenAndTrained {
    /// The fixed weights, by name.
    pub frozen: HashMap<String, Tensor>,
    /// The trained variables, created on first use.
    pub trained: VarMap,
}

impl SimpleBackend for FrozenAndTrained {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.frozen.get(name) {
            Some(tensor) if tensor.shape() == &shape => tensor.to_dtype(dtype)?.to_device(device),
            Some(tensor) => candle_core::bail!(
                "fixed weight {name} has shape {:?}, the config needs {shape:?}",
                tensor.dims()
            ),
            None => self.trained.get(shape, name, init, dtype, device),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.frozen.get(name) {
            Some(tensor) => tensor.to_dtype(dtype)?.to_device(device),
            None => candle_core::bail!("no tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.frozen.contains_key(name)
            || self
                .trained
                .data()
                .lock()
                .is_ok_and(|d| d.contains_key(name))
    }
}
