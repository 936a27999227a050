//! `himmel generate` end to end on a tiny Wan model saved by diffusers' `WanPipeline`
//! (`tools/reference/wan_pipeline.py`): from the same initial latents the binary writes the
//! frames diffusers made; bad models and requests get clear errors.

mod common;

use himmel_core::compare::max_abs_difference;
use std::fs;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

fn io() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("pipeline_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

const PROMPT: &str = "a red ball bounces  on the grass &amp; sky";

#[test]
fn generates_what_diffusers_generates() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("pipeline_tiny");
    let io = io();
    for (name, height, width, frames, steps) in [
        ("square", "32", "32", "5", "3"),
        ("wide", "16", "48", "9", "4"),
    ] {
        let latents = dir.path().join(format!("{name}_latents.safetensors"));
        candle_core::safetensors::save(
            &[("latents", io[&format!("{name}_latents")].clone())]
                .into_iter()
                .collect(),
            &latents,
        )
        .unwrap();
        let out = dir.path().join(format!("{name}.safetensors"));
        let args = [
            "generate",
            PROMPT,
            "--model",
            model.to_str().unwrap(),
            "--negative-prompt",
            "blurry",
            "--height",
            height,
            "--width",
            width,
            "--frames",
            frames,
            "--steps",
            steps,
            "--guidance",
            "4",
            "--latents",
            latents.to_str().unwrap(),
            "--dtype",
            "f32",
            "--max-sequence-length",
            "16",
            "-o",
            out.to_str().unwrap(),
        ];
        himmel_ok(&args);
        let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let expected = &io[&format!("{name}_frames")];
        let error = max_abs_difference(&written["video"], expected).unwrap();
        assert!(error <= 2e-3, "{name}: max abs error {error}");
    }
    // The same model also writes an MP4 from seeded noise, in bf16 and in int8 (bf16 where the
    // CPU lacks AVX2 and VNNI).
    let model = model.to_str().unwrap();
    for dtype in ["bf16", "int8"] {
        let mp4 = dir.path().join(format!("seeded-{dtype}.mp4"));
        himmel_ok(&[
            "generate",
            "a blue cube",
            "--model",
            model,
            "--height",
            "32",
            "--width",
            "32",
            "--frames",
            "5",
            "--steps",
            "2",
            "--max-sequence-length",
            "16",
            "--seed",
            "7",
            "--dtype",
            dtype,
            "-o",
            mp4.to_str().unwrap(),
        ]);
        assert!(ffprobe(&mp4, "nb_read_frames").contains("nb_read_frames=5"));
    }
}

#[test]
fn bad_requests_and_models_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("pipeline_tiny");
    let model_arg = model.to_str().unwrap();
    let out = dir.path().join("out.mp4");
    let out_arg = out.to_str().unwrap();
    let run = |extra: &[&str], model: &str| {
        let args = [
            &[
                "generate",
                "a ball",
                "--model",
                model,
                "--max-sequence-length",
                "16",
                "-o",
                out_arg,
                "--steps",
                "1",
            ],
            extra,
        ]
        .concat();
        himmel_err(&args)
    };
    assert!(
        run(
            &["--frames", "8", "--width", "32", "--height", "32"],
            model_arg
        )
        .contains("nearest valid: 5 or 9")
    );
    assert!(
        run(
            &["--frames", "5", "--width", "40", "--height", "32"],
            model_arg
        )
        .contains("width must be a positive multiple of 16")
    );
    assert!(run(&[], dir.path().to_str().unwrap()).contains("no model_index.json"));
    if !cfg!(feature = "cuda") {
        assert!(run(&["--device", "cuda"], model_arg).contains("built without CUDA"));
    }
    // Without --model the built-in model is used; where it cannot be found, the error says so.
    let nowhere = std::process::Command::new(env!("CARGO_BIN_EXE_himmel"))
        .args(["generate", "a ball", "-o", out_arg])
        .env("HIMMEL_MODELS", dir.path())
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        message.contains("built-in model himmel-mini is not in"),
        "{message}"
    );

    // A copy of the model with broken weights.
    let broken = dir.path().join("broken");
    for sub in [
        "",
        "tokenizer",
        "text_encoder",
        "transformer",
        "vae",
        "scheduler",
    ] {
        fs::create_dir_all(broken.join(sub)).unwrap();
        for entry in fs::read_dir(model.join(sub))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
        {
            fs::copy(entry.path(), broken.join(sub).join(entry.file_name())).unwrap();
        }
    }
    let broken_arg = broken.to_str().unwrap();
    let weights = broken.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let message = run(
        &["--frames", "5", "--width", "32", "--height", "32"],
        broken_arg,
    );
    assert!(message.contains("transformer"), "{message}");

    // A header that claims more data than the file holds.
    let mut lying = bytes.clone();
    let header_length = u64::from_le_bytes(lying[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(lying[8..8 + header_length].to_vec()).unwrap();
    let patched = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[9,", 1);
    assert_eq!(patched.len(), header.len());
    lying[8..8 + header_length].copy_from_slice(patched.as_bytes());
    fs::write(&weights, &lying).unwrap();
    assert!(
        run(
            &["--frames", "5", "--width", "32", "--height", "32"],
            broken_arg
        )
        .contains("transformer")
    );

    // Weights whose shapes do not match the configuration.
    fs::write(&weights, &bytes).unwrap();
    let config_path = broken.join("transformer/config.json");
    let config = fs::read_to_string(&config_path)
        .unwrap()
        .replace("\"ffn_dim\": 40", "\"ffn_dim\": 48");
    fs::write(&config_path, config).unwrap();
    let message = run(
        &["--frames", "5", "--width", "32", "--height", "32"],
        broken_arg,
    );
    assert!(message.contains("shape"), "{message}");

    // A sharded model whose index names a missing shard.
    fs::copy(model.join("transformer/config.json"), &config_path).unwrap();
    fs::write(
        broken.join("vae/diffusion_pytorch_model.safetensors.index.json"),
        r#"{"weight_map": {"decoder.conv_in.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let message = run(
        &["--frames", "5", "--width", "32", "--height", "32"],
        broken_arg,
    );
    assert!(
        message.contains("00002-of-00002") && message.contains("missing"),
        "{message}"
    );
    assert!(!out.exists(), "no output after a failure");
}

#[test]
fn vae_tiling_decodes_frames_wider_than_a_tile_in_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("pipeline_tiny");
    let generate = |width: &str, tiled: bool| {
        let out = dir.path().join(format!("{width}-{tiled}.safetensors"));
        let mut args = vec![
            "generate",
            "a blue cube",
            "--model",
            model.to_str().unwrap(),
            "--height",
            "32",
            "--width",
            width,
            "--frames",
            "5",
            "--steps",
            "1",
            "--max-sequence-length",
            "16",
            "--seed",
            "3",
            "-o",
            out.to_str().unwrap(),
        ];
        if tiled {
            args.push("--vae-tiling");
        }
        himmel_ok(&args);
        candle_core::safetensors::load(&out, &Device::Cpu).unwrap()["video"].clone()
    };
    // 272 pixels are two tiles of 256 every 192: the frames differ from one whole decode.
    let (whole, tiled) = (generate("272", false), generate("272", true));
    assert_eq!(whole.dims(), tiled.dims());
    assert!(max_abs_difference(&whole, &tiled).unwrap() > 0.0);
    // Frames within one tile decode whole either way.
    let (whole, tiled) = (generate("32", false), generate("32", true));
    assert_eq!(max_abs_difference(&whole, &tiled).unwrap(), 0.0);
}
