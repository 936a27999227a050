//! The Wan transformer against diffusers 0.42.1 on a tiny random model
//! (fixture made by `tools/reference/wan_transformer.py`).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use himmel_core::compare::max_abs_difference;
use himmel_models::wan::{WanTransformer, WanTransformerConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

fn load(dtype: DType) -> (WanTransformer, std::collections::HashMap<String, Tensor>) {
    load_with(dtype, WanTransformer::new)
}

fn load_with(
    dtype: DType,
    make: impl Fn(&WanTransformerConfig, VarBuilder) -> candle_core::Result<WanTransformer>,
) -> (WanTransformer, std::collections::HashMap<String, Tensor>) {
    let dir = fixtures().join("transformer_tiny");
    let config: WanTransformerConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = [dir.join("diffusion_pytorch_model.safetensors")];
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, dtype, &Device::Cpu) }.unwrap();
    let model = make(&config, vb).unwrap();
    let io = candle_core::safetensors::load(
        fixtures().join("transformer_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    (model, io)
}

#[test]
fn forward_matches_diffusers_in_f32() {
    let (model, io) = load(DType::F32);
    let output = model
        .forward(&io["latents"], &io["timestep"], &io["text"])
        .unwrap();
    assert_eq!(output.dims(), io["output"].dims());
    let error = max_abs_difference(&output, &io["output"]).unwrap();
    println!("max abs error {error}");
    assert!(error <= 1e-4, "max abs error {error}");
}

#[test]
fn forward_in_bf16_stays_close() {
    let (model, io) = load(DType::BF16);
    let text = io["text"].to_dtype(DType::BF16).unwrap();
    let output = model
        .forward(&io["latents"], &io["timestep"], &text)
        .unwrap();
    let scale = io["output"]
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let error = max_abs_difference(&output, &io["output"]).unwrap();
    println!("max abs error {error}");
    // bf16 keeps 8 bits of mantissa; two blocks of this tiny model stay within 5% of the range.
    assert!(
        error <= 0.05 * scale,
        "max abs error {error} against output range {scale}"
    );
}

#[test]
fn forward_in_int8_stays_close() {
    if !himmel_models::kernels::int8_available() {
        eprintln!("skipped: this CPU lacks AVX2 and AVX-512 VNNI");
        return;
    }
    let (model, io) = load_with(DType::BF16, WanTransformer::new_int8);
    let text = io["text"].to_dtype(DType::BF16).unwrap();
    let output = model
        .forward(&io["latents"], &io["timestep"], &text)
        .unwrap();
    let expected = &io["output"];
    let spread = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let error = spread(&(output.to_dtype(DType::F32).unwrap() - expected).unwrap());
    let relative = error / spread(expected);
    println!("relative rms error {relative}");
    // int8 steps are 1/127 of each token's largest value and 1/127 (AVX2: 1/63) of each
    // channel's, on top of bf16.
    assert!(relative <= 0.05, "relative rms error {relative}");
}
