//! Every weight layout loads into the same model: a tiny diffusers model is rewritten with the
//! original Wan names (and ComfyUI's prefixed names), loaded through layout detection, and must
//! give exactly the outputs of the diffusers layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use himmel_core::compare::max_abs_difference;
use himmel_models::umt5::checkpoint::original_umt5_name;
use himmel_models::umt5::{Umt5Config, Umt5Encoder};
use himmel_models::wan::checkpoint::{original_transformer_name, original_vae_name};
use himmel_models::wan::{WanTransformerConfig, WanVaeConfig};
use himmel_pipeline::Precision;
use himmel_pipeline::checkpoint::{Checkpoint, KeyLayout};
use himmel_pipeline::wan::{load_transformer, load_vae};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn config<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes `source`'s tensors to `target` under `rename(name)`.
fn rewrite(source: &Path, target: &Path, rename: impl Fn(&str) -> String) {
    let tensors = candle_core::safetensors::load(source, &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, tensor)| (rename(&name), tensor))
        .collect();
    candle_core::safetensors::save(&renamed, target).unwrap();
}

#[test]
fn transformer_layouts_give_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let wan = fixtures().join("wan");
    let source = wan.join("transformer_tiny/diffusion_pytorch_model.safetensors");
    let config: WanTransformerConfig = config(&wan.join("transformer_tiny/config.json"));
    let io =
        candle_core::safetensors::load(wan.join("transformer_tiny_io.safetensors"), &Device::Cpu)
            .unwrap();
    let run = |file: &Path| {
        let model = load_transformer(
            &[file.to_path_buf()],
            Some(config.clone()),
            Precision::F32,
            &Device::Cpu,
        )
        .unwrap();
        model
            .forward(&io["latents"], &io["timestep"], &io["text"])
            .unwrap()
    };
    let reference = run(&source);
    let original = dir.path().join("wan2.1_original.safetensors");
    rewrite(&source, &original, original_transformer_name);
    let comfy = dir.path().join("wan2.1_comfy.safetensors");
    rewrite(&source, &comfy, |name| {
        format!("model.diffusion_model.{}", original_transformer_name(name))
    });
    assert_eq!(
        Checkpoint::open(std::slice::from_ref(&comfy))
            .unwrap()
            .transformer_layout()
            .unwrap(),
        KeyLayout::Original {
            prefix: "model.diffusion_model.".into()
        }
    );
    for file in [original, comfy] {
        assert_eq!(
            max_abs_difference(&run(&file), &reference).unwrap(),
            0.0,
            "{file:?}"
        );
    }
}

#[test]
fn vae_layouts_give_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let wan = fixtures().join("wan");
    let source = wan.join("vae_tiny/diffusion_pytorch_model.safetensors");
    let vae_config: WanVaeConfig = config(&wan.join("vae_tiny/config.json"));
    let io =
        candle_core::safetensors::load(wan.join("vae_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let decode = |file: &Path| {
        load_vae(&[file.to_path_buf()], vae_config.clone(), &Device::Cpu)
            .unwrap()
            .decode(&io["latents"])
            .unwrap()
    };
    let original = dir.path().join("wan_2.1_vae.safetensors");
    let blocks = vae_config.num_res_blocks;
    rewrite(&source, &original, |name| original_vae_name(name, blocks));
    assert_eq!(
        max_abs_difference(&decode(&original), &decode(&source)).unwrap(),
        0.0
    );
}

#[test]
fn umt5_layouts_give_identical_outputs_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    let umt5 = fixtures().join("umt5");
    let source = umt5.join("encoder_tiny/model.safetensors");
    let expected: Umt5Config = config(&umt5.join("encoder_tiny/config.json"));
    let io = candle_core::safetensors::load(umt5.join("encoder_tiny_io.safetensors"), &Device::Cpu)
        .unwrap();
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let encode = |file: &Path| {
        let checkpoint = Checkpoint::open(&[file.to_path_buf()]).unwrap();
        let layout = checkpoint.umt5_layout().unwrap();
        let config = checkpoint.umt5_config(&layout).unwrap();
        assert_eq!(
            (
                config.d_model,
                config.d_kv,
                config.num_heads,
                config.d_ff,
                config.num_layers,
                config.vocab_size
            ),
            (
                expected.d_model,
                expected.d_kv,
                expected.num_heads,
                expected.d_ff,
                expected.num_layers,
                expected.vocab_size
            )
        );
        let vb = checkpoint
            .var_builder(&layout, original_umt5_name, DType::F32, &Device::Cpu)
            .unwrap();
        // The rows a prompt needs, read alone, are the table's rows.
        let stored = match layout {
            KeyLayout::Diffusers => "shared.weight".to_string(),
            KeyLayout::Original { .. } => original_umt5_name("shared.weight"),
        };
        let picked = [3u32, 0, 3];
        let rows = checkpoint
            .rows(&stored, &picked, DType::F32, &Device::Cpu)
            .unwrap();
        let table = vb
            .get((config.vocab_size, config.d_model), "shared.weight")
            .unwrap();
        let expected = table
            .index_select(&Tensor::new(&picked, &Device::Cpu).unwrap(), 0)
            .unwrap();
        assert_eq!(max_abs_difference(&rows, &expected).unwrap(), 0.0);
        let past = checkpoint.rows(
            &stored,
            &[config.vocab_size as u32],
            DType::F32,
            &Device::Cpu,
        );
        assert!(past.unwrap_err().to_string().contains("past the"));
        Umt5Encoder::new(&config, vb)
            .unwrap()
            .forward(&ids, &io["attention_mask"])
            .unwrap()
    };
    let original = dir.path().join("models_t5_umt5-xxl-enc.safetensors");
    rewrite(&source, &original, original_umt5_name);
    assert_eq!(
        max_abs_difference(&encode(&original), &encode(&source)).unwrap(),
        0.0
    );
}

#[test]
fn unknown_layouts_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mystery.safetensors");
    let tensors: HashMap<String, Tensor> = [(
        "mystery.weight".to_string(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let message = Checkpoint::open(&[file])
        .unwrap()
        .transformer_layout()
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("does not look like a Wan transformer")
            && message.contains("mystery.weight"),
        "{message}"
    );
}

#[test]
fn the_original_pth_vae_loads_without_pickle_code() {
    let wan = fixtures().join("wan");
    let vae_config: WanVaeConfig = config(&wan.join("vae_tiny/config.json"));
    let io =
        candle_core::safetensors::load(wan.join("vae_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let pth = wan.join("vae_tiny_original.pth");
    assert_eq!(
        Checkpoint::open(std::slice::from_ref(&pth))
            .unwrap()
            .vae_layout()
            .unwrap(),
        KeyLayout::Original {
            prefix: String::new()
        }
    );
    let decoded = load_vae(&[pth], vae_config, &Device::Cpu)
        .unwrap()
        .decode(&io["latents"])
        .unwrap();
    assert!(max_abs_difference(&decoded, &io["decoded"]).unwrap() <= 1e-4);
}
