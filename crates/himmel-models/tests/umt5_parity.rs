//! The UMT5 encoder against transformers on a tiny random model
//! (fixture made by `tools/reference/umt5.py`).

use himmel_core::compare::max_abs_difference;
use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use himmel_models::umt5::{Umt5Config, Umt5Encoder};

#[test]
fn encoder_matches_transformers_in_f32() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/umt5");
    let dir = fixtures.join("encoder_tiny");
    let config: Umt5Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let encoder = Umt5Encoder::new(&config, vb).unwrap();
    let io =
        candle_core::safetensors::load(fixtures.join("encoder_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let hidden = encoder.forward(&ids, &io["attention_mask"]).unwrap();
    let error = max_abs_difference(&hidden, &io["hidden"]).unwrap();
    println!("max abs error {error}");
    assert!(error <= 1e-4, "max abs error {error}");
}
