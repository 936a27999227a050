//! The UMT5 encoder against transformers on a tiny random model
//! (fixture made by `tools/reference/umt5.py`), with its weights in memory or streamed.

use himmel_core::compare::max_abs_difference;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use himmel_models::umt5::{Umt5Config, Umt5Encoder, Umt5Source};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/umt5")
}

fn config() -> Umt5Config {
    let path = fixtures().join("encoder_tiny/config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn weights() -> Result<VarBuilder<'static>> {
    let file = fixtures().join("encoder_tiny/model.safetensors");
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu) }
}

/// The fixture's file, reopened for every part.
struct Fixture {
    vocabulary: usize,
    width: usize,
}

impl Umt5Source for Fixture {
    fn embedding_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let table = weights()?.get((self.vocabulary, self.width), "shared.weight")?;
        table.index_select(&Tensor::new(ids, &Device::Cpu)?, 0)
    }

    fn open(&self) -> Result<VarBuilder<'static>> {
        weights()
    }
}

/// Largest difference from transformers' hidden states on the fixture's prompts.
fn error_against_transformers(encoder: &Umt5Encoder) -> f32 {
    let io = candle_core::safetensors::load(
        fixtures().join("encoder_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let hidden = encoder.forward(&ids, &io["attention_mask"]).unwrap();
    max_abs_difference(&hidden, &io["hidden"]).unwrap()
}

#[test]
fn encoder_matches_transformers_in_f32() {
    let encoder = Umt5Encoder::new(&config(), weights().unwrap()).unwrap();
    let error = error_against_transformers(&encoder);
    println!("max abs error {error}");
    assert!(error <= 1e-4, "max abs error {error}");
}

#[test]
fn streamed_encoder_matches_transformers_in_f32() {
    let config = config();
    let source = Fixture {
        vocabulary: config.vocab_size,
        width: config.d_model,
    };
    let encoder = Umt5Encoder::streamed(&config, Box::new(source)).unwrap();
    let error = error_against_transformers(&encoder);
    println!("max abs error {error}");
    assert!(error <= 1e-4, "max abs error {error}");
}
