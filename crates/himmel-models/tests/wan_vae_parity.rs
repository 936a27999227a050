//! The Wan VAE against diffusers 0.42.1 on a tiny random model
//! (fixture made by `tools/reference/wan_vae.py`).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use himmel_core::compare::max_abs_difference;
use himmel_models::wan::{VaeTiling, WanVae, WanVaeConfig};

fn load() -> (WanVae, std::collections::HashMap<String, Tensor>) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan");
    let dir = fixtures.join("vae_tiny");
    let config: WanVaeConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = [dir.join("diffusion_pytorch_model.safetensors")];
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &Device::Cpu) }.unwrap();
    let io = candle_core::safetensors::load(fixtures.join("vae_tiny_io.safetensors"), &Device::Cpu)
        .unwrap();
    (WanVae::new(&config, vb).unwrap(), io)
}

#[test]
fn encode_matches_diffusers() {
    let (vae, io) = load();
    let mean = vae.encode(&io["video"]).unwrap();
    assert_eq!(mean.dims(), io["mean"].dims());
    let error = max_abs_difference(&mean, &io["mean"]).unwrap();
    println!("encode max abs error {error}");
    assert!(error <= 1e-4, "max abs error {error}");
}

#[test]
fn decode_matches_diffusers() {
    let (vae, io) = load();
    let decoded = vae.decode(&io["latents"]).unwrap();
    assert_eq!(decoded.dims(), io["decoded"].dims());
    let error = max_abs_difference(&decoded, &io["decoded"]).unwrap();
    println!("decode max abs error {error}");
    assert!(error <= 1e-4, "max abs error {error}");
}

#[test]
fn tiled_decode_matches_diffusers() {
    let (vae, _) = load();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan");
    let io = candle_core::safetensors::load(
        fixtures.join("vae_tiny_tiled_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tiling = VaeTiling {
        tile: (32, 32),
        stride: (16, 24),
    };
    let decoded = vae.decode_tiled(&io["latents"], &tiling).unwrap();
    assert_eq!(decoded.dims(), io["decoded"].dims());
    let error = max_abs_difference(&decoded, &io["decoded"]).unwrap();
    println!("tiled decode max abs error {error}");
    assert!(error <= 1e-4, "max abs error {error}");
    // Latents within one tile decode untiled; sizes off the spatial factor are refused.
    let small = io["latents"]
        .narrow(3, 0, 4)
        .unwrap()
        .narrow(4, 0, 4)
        .unwrap();
    let whole = vae.decode(&small).unwrap();
    let error = max_abs_difference(&vae.decode_tiled(&small, &tiling).unwrap(), &whole).unwrap();
    assert_eq!(error, 0.0);
    let odd = VaeTiling {
        tile: (30, 32),
        stride: (16, 24),
    };
    let message = vae.decode_tiled(&small, &odd).unwrap_err().to_string();
    assert!(message.contains("multiples of 8"), "{message}");
}

#[test]
fn normalisation_round_trips() {
    let (vae, io) = load();
    let back = vae
        .denormalize(&vae.normalize(&io["latents"]).unwrap())
        .unwrap();
    assert!(max_abs_difference(&back, &io["latents"]).unwrap() < 1e-5);
}
