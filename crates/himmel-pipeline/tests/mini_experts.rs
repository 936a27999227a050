//! Two experts on tiny random himmel-mini models: the high-noise expert in `high_noise/` takes
//! exactly the steps at or above the boundary, its patches may differ from the model's, skip
//! guidance weighs on the model's own steps only, and folders whose experts do not fit are
//! refused with the reason.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use himmel_core::Silent;
use himmel_models::mini::{
    HimmelMini, MiniConfig, Prediction, SamplingDefaults, SkipGuidance, VideoShape,
};
use himmel_models::umt5::Umt5Config;
use himmel_models::wan::{WanTransformerConfig, WanVaeConfig};
use himmel_pipeline::mini::{HIGH_NOISE_DIR, join_experts};
use himmel_pipeline::{GenerationRequest, MiniPipeline};

fn config(vocabulary: &[&str], prediction: Prediction) -> MiniConfig {
    let z_dim = 4;
    MiniConfig {
        autoencoder: WanVaeConfig {
            base_dim: 4,
            decoder_base_dim: None,
            z_dim,
            dim_mult: vec![1, 1, 1, 1],
            num_res_blocks: 1,
            latents_mean: vec![0.1; z_dim],
            latents_std: vec![0.9; z_dim],
            ..WanVaeConfig::default_wan21()
        },
        denoiser: WanTransformerConfig {
            patch_size: [1, 1, 1],
            num_attention_heads: 2,
            attention_head_dim: 12,
            in_channels: 2 * z_dim + 1,
            out_channels: z_dim,
            text_dim: 16,
            freq_dim: 16,
            ffn_dim: 48,
            num_layers: 2,
            ..WanTransformerConfig::default()
        },
        text_encoder: Umt5Config {
            vocab_size: vocabulary.len() + 2,
            d_model: 16,
            d_kv: 8,
            d_ff: 32,
            num_layers: 1,
            num_heads: 2,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            ..Umt5Config::default()
        },
        vocabulary: vocabulary.iter().map(|word| word.to_string()).collect(),
        max_prompt_tokens: 8,
        video: VideoShape {
            width: 16,
            height: 16,
            frames: 5,
            fps: 8.0,
        },
        sampling: SamplingDefaults {
            steps: 6,
            guidance: 3.0,
            shift: 2.0,
            boundary: None,
            expert_guidance: None,
            skip_guidance: None,
        },
        prediction,
    }
}

/// Writes `config` and fresh random weights for it into `dir`; with `autoencoder`, the
/// autoencoder's weights are those of the model in that folder, as experts share one.
fn write_model(dir: &Path, config: &MiniConfig, autoencoder: Option<&Path>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut weights = VarMap::new();
    let vb = VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu);
    HimmelMini::new(config, vb).unwrap();
    // Every parameter moved off its initial value, so that no branch is zero.
    for var in weights.all_vars() {
        let noise = var.randn_like(0.0, 0.1).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    if let Some(other) = autoencoder {
        let tensors =
            candle_core::safetensors::load(other.join("model.safetensors"), &Device::Cpu).unwrap();
        let shared = tensors
            .iter()
            .filter(|(name, _)| name.starts_with("autoencoder."));
        weights.set(shared).unwrap();
    }
    weights.save(dir.join("model.safetensors")).unwrap();
    write_config(dir, config);
}

fn write_config(dir: &Path, config: &MiniConfig) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
}

/// Writes a low-noise model (x-prediction) and a high-noise expert (flow) into `dir` and
/// joins them at noise level 0.5; returns the model's, the expert's and the pair's folders.
fn write_pair(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let low = dir.join("low");
    let high = dir.join("high");
    write_model(&low, &config(&["a", "red"], Prediction::Sample), None);
    write_model(&high, &config(&["ball"], Prediction::Flow), Some(&low));
    let pair = dir.join("pair");
    join_experts(&low, &high, 0.5, &pair).unwrap();
    (low, high, pair)
}

/// `dir`'s config.
fn read_config(dir: &Path) -> MiniConfig {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// The clip `dir`'s model makes of a red ball, its frames as numbers.
fn generate(dir: &Path, boundary: Option<f64>) -> Vec<f32> {
    generate_guided(dir, boundary, 3.0, None)
}

/// [`generate`] with these guidance scales.
fn generate_guided(
    dir: &Path,
    boundary: Option<f64>,
    guidance: f64,
    expert_guidance: Option<f64>,
) -> Vec<f32> {
    generate_request(
        dir,
        GenerationRequest {
            guidance,
            boundary,
            expert_guidance,
            ..red_ball()
        },
    )
}

/// The request of [`generate`] with its defaults.
fn red_ball() -> GenerationRequest {
    GenerationRequest {
        steps: 6,
        guidance: 3.0,
        seed: 5,
        ..GenerationRequest::new("a red ball", (16, 16, 5), 8.0)
    }
}

/// The clip `dir`'s model makes for `request`, its frames as numbers.
fn generate_request(dir: &Path, request: GenerationRequest) -> Vec<f32> {
    let pipeline = MiniPipeline::load(dir, &Device::Cpu).unwrap();
    let request = pipeline.validate(request).unwrap();
    let video = pipeline
        .generate(&request, "a red ball bounces on grass", &Silent)
        .unwrap();
    video
        .to_f32()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn the_high_noise_expert_takes_the_steps_above_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let low = dir.path().join("low");
    let high = dir.path().join("high");
    write_model(
        &low,
        &config(&["a", "red", "ball"], Prediction::Sample),
        None,
    );
    // The expert has its own vocabulary and text encoder.
    let words = ["a", "red", "ball", "bounces", "on", "grass"];
    write_model(&high, &config(&words, Prediction::Flow), Some(&low));
    let (low_alone, high_alone) = (generate(&low, None), generate(&high, None));
    assert_ne!(low_alone, high_alone);

    let pair = dir.path().join("pair");
    join_experts(&low, &high, 0.5, &pair).unwrap();
    let both = generate(&pair, None);
    assert_ne!(both, low_alone);
    assert_ne!(both, high_alone);
    // From noise level 0 the expert takes every step; a request overrides the model's boundary.
    assert_eq!(generate(&pair, Some(0.0)), high_alone);
    assert_ne!(generate(&pair, Some(0.9)), both);

    // A model that is its own expert makes what it makes alone: switching loses nothing.
    let twin = dir.path().join("twin");
    join_experts(&low, &low, 0.5, &twin).unwrap();
    assert_eq!(generate(&twin, None), low_alone);
}

#[test]
fn experts_may_cut_latents_into_patches_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let low = dir.path().join("low");
    let high = dir.path().join("high");
    write_model(&low, &config(&["a", "red"], Prediction::Sample), None);
    let mut coarse = config(&["ball"], Prediction::Flow);
    coarse.denoiser.patch_size = [1, 2, 2];
    write_model(&high, &coarse, Some(&low));
    let pair = dir.path().join("pair");
    join_experts(&low, &high, 0.5, &pair).unwrap();

    // Sizes must fit the coarser patches: 8x the autoencoder's, 2x the expert's.
    let pipeline = MiniPipeline::load(&pair, &Device::Cpu).unwrap();
    assert_eq!(pipeline.limits().size_multiple, 16);
    let both = generate(&pair, None);
    assert_ne!(both, generate(&low, None));
    assert_eq!(generate(&pair, Some(0.0)), generate(&high, None));
}

#[test]
fn the_high_noise_expert_guides_by_its_own_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (low, high, pair) = write_pair(dir.path());

    // From noise level 0 the expert takes every step, at its own scale, whatever the model's.
    let expert_alone = generate_guided(&high, None, 5.0, None);
    assert_eq!(
        generate_guided(&pair, Some(0.0), 1.0, Some(5.0)),
        expert_alone
    );
    // Unset, the expert guides as the model does.
    let both = generate(&pair, None);
    assert_eq!(generate_guided(&pair, None, 3.0, Some(3.0)), both);
    let unguided_expert = generate_guided(&pair, None, 3.0, Some(1.0));
    assert_ne!(unguided_expert, both);
    // The model's own `sampling.expert_guidance` is the default.
    let mut pair_config = read_config(&pair);
    pair_config.sampling.expert_guidance = Some(1.0);
    write_config(&pair, &pair_config);
    assert_eq!(generate(&pair, None), unguided_expert);

    // Without an expert there is nothing to guide apart.
    let mut low_config = read_config(&low);
    low_config.sampling.expert_guidance = Some(2.0);
    write_config(&low, &low_config);
    let Err(error) = MiniPipeline::load(&low, &Device::Cpu) else {
        panic!("an expert guidance without an expert loaded")
    };
    assert!(
        error.to_string().contains("sampling.expert_guidance"),
        "{error}"
    );
}

#[test]
fn skip_guidance_weighs_on_the_models_own_steps() {
    let dir = tempfile::tempdir().unwrap();
    let pair = write_pair(dir.path()).2;
    let skipping = |scale, boundary| GenerationRequest {
        skip_guidance: Some(SkipGuidance { scale, layer: 1 }),
        boundary,
        ..red_ball()
    };

    let plain = generate(&pair, None);
    let skipped = generate_request(&pair, skipping(2.0, None));
    assert_ne!(skipped, plain);
    assert_eq!(generate_request(&pair, skipping(0.0, None)), plain);
    // When the expert takes every step, skip guidance (of the model's steps) has none to weigh on.
    assert_eq!(
        generate_request(&pair, skipping(2.0, Some(0.0))),
        generate(&pair, Some(0.0))
    );
    // The model's own `sampling.skip_guidance` is the default.
    let mut pair_config = read_config(&pair);
    pair_config.sampling.skip_guidance = Some(SkipGuidance {
        scale: 2.0,
        layer: 1,
    });
    write_config(&pair, &pair_config);
    assert_eq!(generate(&pair, None), skipped);

    // A block the denoiser does not have is refused, in the model and in a request.
    let pipeline = MiniPipeline::load(&pair, &Device::Cpu).unwrap();
    let request = GenerationRequest {
        skip_guidance: Some(SkipGuidance {
            scale: 2.0,
            layer: 2,
        }),
        ..red_ball()
    };
    let error = pipeline.validate(request).unwrap_err().to_string();
    assert!(error.contains("has 2 blocks"), "{error}");
    pair_config.sampling.skip_guidance = Some(SkipGuidance {
        scale: 2.0,
        layer: 2,
    });
    write_config(&pair, &pair_config);
    let Err(error) = MiniPipeline::load(&pair, &Device::Cpu) else {
        panic!("skip guidance of a block the denoiser lacks loaded")
    };
    assert!(
        error.to_string().contains("skip guidance layer 2"),
        "{error}"
    );
}

#[test]
fn experts_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let low = dir.path().join("low");
    write_model(&low, &config(&["a"], Prediction::Sample), None);
    let load_error = |dir: &Path| match MiniPipeline::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(error) => error.to_string(),
    };

    let pair = dir.path().join("pair");
    join_experts(&low, &low, 0.9, &pair).unwrap();
    let error = join_experts(&low, &low, 0.9, &pair)
        .unwrap_err()
        .to_string();
    assert!(error.contains("already exists"), "{error}");
    let error = join_experts(&pair, &low, 0.9, &dir.path().join("third"));
    assert!(
        error
            .unwrap_err()
            .to_string()
            .contains("already has a high-noise expert")
    );

    // A folder whose expert is gone, or whose boundary is.
    std::fs::rename(pair.join(HIGH_NOISE_DIR), dir.path().join("expert")).unwrap();
    let error = load_error(&pair);
    assert!(
        error.contains("sampling.boundary is 0.9 but there is no high-noise expert"),
        "{error}"
    );
    std::fs::rename(dir.path().join("expert"), pair.join(HIGH_NOISE_DIR)).unwrap();
    let mut pair_config = read_config(&pair);
    pair_config.sampling.boundary = None;
    write_config(&pair, &pair_config);
    let error = load_error(&pair);
    assert!(
        error.contains("sampling.boundary") && error.contains("not set"),
        "{error}"
    );

    // An expert trained on other latents (its latent statistics differ) or a boundary that is
    // no noise level: nothing is written.
    let other = dir.path().join("other");
    let mut other_config = config(&["a"], Prediction::Flow);
    other_config.autoencoder.latents_std[0] = 2.0;
    write_model(&other, &other_config, Some(&low));
    let mismatched = dir.path().join("mismatched");
    let error = join_experts(&low, &other, 0.9, &mismatched)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("other/config.json") && error.contains("autoencoder"),
        "{error}"
    );
    assert!(!mismatched.exists());
    // The same expert put into a folder by hand is refused when the folder loads.
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(other.join(file), pair.join(HIGH_NOISE_DIR).join(file)).unwrap();
    }
    pair_config.sampling.boundary = Some(0.9);
    write_config(&pair, &pair_config);
    let error = load_error(&pair);
    assert!(
        error.contains("high_noise/config.json") && error.contains("autoencoder"),
        "{error}"
    );
    let out_of_range = dir.path().join("out-of-range");
    let error = join_experts(&low, &low, 1.5, &out_of_range)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a noise level from 0 to 1"), "{error}");
    assert!(!out_of_range.exists());

    // Only a model with an expert takes a boundary.
    let pipeline = MiniPipeline::load(&low, &Device::Cpu).unwrap();
    let error = pipeline
        .validate(GenerationRequest {
            boundary: Some(0.5),
            ..GenerationRequest::new("a", (16, 16, 5), 8.0)
        })
        .unwrap_err();
    assert!(
        error.to_string().contains("no high-noise expert"),
        "{error}"
    );
}
