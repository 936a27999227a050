//! Training on tiny configs: losses fall, resumed runs repeat uninterrupted ones exactly, and
//! broken checkpoints are named.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use himmel_models::mini::{Prediction, SamplingDefaults, VideoShape};
use himmel_models::umt5::Umt5Config;
use himmel_models::wan::{WanTransformerConfig, WanVae, WanVaeConfig};
use himmel_train::TrainError;
use himmel_train::autoencoder::{AutoencoderStage, read_trained};
use himmel_train::config::{
    AutoencoderRecipe, Crop, DenoiserRecipe, LoopConfig, MaskRates, OptimizerConfig,
};
use himmel_train::data::ClipSource;
use himmel_train::denoiser::{DenoiserStage, read_model};
use himmel_train::log::LogRow;
use himmel_train::trainer::{RunOptions, RunSummary, Stage, run};
use himmel_world::SceneMix;
use himmel_world::vocab::CameraMotion;

const VIDEO: VideoShape = VideoShape {
    width: 16,
    height: 16,
    frames: 5,
    fps: 8.0,
};

fn optimizer(learning_rate: f64) -> OptimizerConfig {
    OptimizerConfig {
        learning_rate,
        warmup_steps: 3,
        final_learning_rate_ratio: 0.1,
        weight_decay: 0.01,
        betas: (0.9, 0.99),
        epsilon: 1e-8,
        gradient_clip: 1.0,
        ema_decay: 0.9,
    }
}

fn autoencoder_recipe(steps: u64) -> AutoencoderRecipe {
    AutoencoderRecipe {
        run: LoopConfig {
            seed: 7,
            steps,
            checkpoint_every: 10,
            batch_size: 2,
        },
        kl_weight: 1e-4,
        object_weight: 4.0,
        gradient_weight: 0.5,
        time_gradient_weight: 0.0,
        adversarial_weight: 0.0,
        adversarial_start: 0,
        decoder_only: false,
        latent_noise: 0.0,
        denoised_latents: 0.0,
        stills: 0,
        object_crops: 0.0,
        frame_weights: Vec::new(),
        folder: None,
        video: VIDEO,
        crop: Crop {
            width: 16,
            height: 16,
            frames: 5,
        },
        optimizer: optimizer(1e-2),
        autoencoder: WanVaeConfig {
            base_dim: 4,
            decoder_base_dim: None,
            z_dim: 4,
            dim_mult: vec![1, 1, 1, 1],
            num_res_blocks: 1,
            ..WanVaeConfig::default_wan21()
        },
    }
}

fn denoiser_recipe(steps: u64) -> DenoiserRecipe {
    DenoiserRecipe {
        run: LoopConfig {
            seed: 9,
            steps,
            checkpoint_every: 10,
            batch_size: 4,
        },
        folder: None,
        object_weight: 4.0,
        last_frame_weight: 1.0,
        caption_dropout: 0.1,
        sigma_shift: 1.0,
        sigma_range: [0.0, 1.0],
        short_prompt_rate: 0.1,
        vocabulary_clips: 20,
        statistics_clips: 4,
        first_frame_statistics: true,
        prediction: Prediction::Flow,
        pool_clips: 8,
        pool_refresh: 2,
        max_prompt_tokens: 32,
        video: VIDEO,
        more_shapes: Vec::new(),
        scenes: None,
        masks: MaskRates {
            first_frame: 0.2,
            first_half: 0.1,
            last_half: 0.1,
            both_ends: 0.1,
        },
        sampling: SamplingDefaults {
            steps: 4,
            guidance: 3.0,
            shift: 2.0,
            boundary: None,
            expert_guidance: None,
            skip_guidance: None,
        },
        optimizer: optimizer(3e-3),
        denoiser: WanTransformerConfig {
            patch_size: [1, 1, 1],
            num_attention_heads: 2,
            attention_head_dim: 12,
            freq_dim: 16,
            ffn_dim: 48,
            num_layers: 2,
            ..WanTransformerConfig::default()
        },
        text_encoder: Umt5Config {
            d_model: 16,
            d_kv: 8,
            d_ff: 32,
            num_layers: 1,
            num_heads: 2,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            ..Umt5Config::default()
        },
    }
}

fn options(dir: &Path, total_steps: u64, stop_after: Option<u64>, resume: bool) -> RunOptions {
    RunOptions {
        dir: dir.to_path_buf(),
        total_steps,
        stop_after,
        checkpoint_every: 3,
        resume,
        start_step: 0,
        optimizer: optimizer(1e-2),
    }
}

/// Options whose exports are the weights themselves (no averaging), started at `start_step`.
fn unaveraged(dir: &Path, total_steps: u64, stop_after: u64, start_step: u64) -> RunOptions {
    let mut options = options(dir, total_steps, Some(stop_after), false);
    options.optimizer.ema_decay = 0.0;
    options.start_step = start_step;
    options
}

fn train(stage: &dyn Stage, options: &RunOptions) -> RunSummary {
    run(stage, options, &mut |_: &LogRow| {}).expect("training runs")
}

/// A folder with the export of a 3-step autoencoder run, for denoisers to train over.
fn tiny_autoencoder(device: &Device) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    let autoencoder = AutoencoderStage::new(&autoencoder_recipe(3), device).expect("stage");
    train(&autoencoder, &options(dir.path(), 3, None, false));
    dir
}

fn mean_loss(rows: &[LogRow]) -> f64 {
    rows.iter().map(|row| row.loss).sum::<f64>() / rows.len() as f64
}

fn assert_falls(rows: &[LogRow]) {
    let early = mean_loss(&rows[..5]);
    let late = mean_loss(&rows[rows.len() - 5..]);
    assert!(late < 0.85 * early, "loss went from {early} to {late}");
}

/// Asserts that a 40-step run of `stage` stopped after step 5 and resumed to step 9 takes the
/// same steps as the uninterrupted run `whole`.
fn assert_resumes_exactly<S: Stage>(stage: impl Fn() -> S, whole: &RunSummary) {
    let split = tempfile::tempdir().expect("temporary folder");
    train(&stage(), &options(split.path(), 40, Some(5), false));
    let tail = train(&stage(), &options(split.path(), 40, Some(9), true));
    let resumed: Vec<f64> = tail.rows.iter().map(|row| row.loss).collect();
    let uninterrupted: Vec<f64> = whole.rows[5..9].iter().map(|row| row.loss).collect();
    assert_eq!(resumed, uninterrupted);
}

#[test]
fn the_autoencoder_learns_and_resumes_exactly() {
    let device = Device::Cpu;
    let recipe = autoencoder_recipe(30);
    let dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::new(&recipe, &device).expect("stage");
    let whole = train(&stage, &options(dir.path(), 30, None, false));
    assert_eq!(whole.rows.len(), 30);
    assert_falls(&whole.rows);
    assert!(dir.path().join("loss.png").exists());
    assert!(read_trained(dir.path()).is_ok());

    let split = tempfile::tempdir().expect("temporary folder");
    let first = AutoencoderStage::new(&recipe, &device).expect("stage");
    let head = train(&first, &options(split.path(), 30, Some(4), false));
    assert_eq!(head.last_step, 4);
    let second = AutoencoderStage::new(&recipe, &device).expect("stage");
    let tail = train(&second, &options(split.path(), 30, Some(8), true));
    assert_eq!(tail.first_step, 4);
    let resumed: Vec<f64> = tail.rows.iter().map(|row| row.loss).collect();
    let uninterrupted: Vec<f64> = whole.rows[4..8].iter().map(|row| row.loss).collect();
    assert_eq!(resumed, uninterrupted);
}

#[test]
fn an_autoencoder_learns_from_stills_beside_its_crops() {
    let device = Device::Cpu;
    let mut recipe = autoencoder_recipe(40);
    recipe.crop.width = 8;
    recipe.stills = 3;
    // Half the crops and stills placed over objects.
    recipe.object_crops = 0.5;
    let stage = || AutoencoderStage::new(&recipe, &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    let whole = train(&stage(), &options(dir.path(), 40, None, false));
    assert_falls(&whole.rows);
    assert_resumes_exactly(stage, &whole);

    // The same first step without stills: the same crops and noise, less the stills' loss.
    let crops_alone = AutoencoderRecipe {
        stills: 0,
        frame_weights: Vec::new(),
        ..recipe.clone()
    };
    let stage = AutoencoderStage::new(&crops_alone, &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    let without = train(&stage, &options(dir.path(), 40, Some(1), false));
    assert!(
        whole.rows[0].loss > without.rows[0].loss + 1e-3,
        "with stills {} against {} without",
        whole.rows[0].loss,
        without.rows[0].loss
    );
}

#[test]
fn an_autoencoder_finer_in_space_learns() {
    // 2x in space and 4x in time: the second downsampling halves time alone.
    let mut recipe = autoencoder_recipe(30);
    recipe.autoencoder.dim_mult = vec![1, 1, 1];
    recipe.autoencoder.temperal_downsample = vec![true, true];
    recipe.autoencoder.spatial_downsample = Some(vec![true, false]);
    let dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::new(&recipe, &Device::Cpu).expect("stage");
    let whole = train(&stage, &options(dir.path(), 30, None, false));
    assert_falls(&whole.rows);
    let trained = read_trained(dir.path()).expect("autoencoder export");
    assert_eq!(trained.config.spatial_downsample, Some(vec![true, false]));
    assert_eq!(trained.config.spatial_factor(), 2);
}

#[test]
fn a_decoder_fine_tunes_over_a_fixed_encoder() {
    let device = Device::Cpu;
    let start_dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::new(&autoencoder_recipe(5), &device).expect("stage");
    train(&stage, &options(start_dir.path(), 5, None, false));
    let start = read_trained(start_dir.path()).expect("autoencoder export");

    let mut recipe = autoencoder_recipe(30);
    recipe.decoder_only = true;
    recipe.latent_noise = 0.2;
    let Err(error) = AutoencoderStage::new(&recipe, &device) else {
        panic!("decoder_only without a start was accepted")
    };
    assert!(error.to_string().contains("decoder_only"), "{error}");

    let dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::fine_tune(
        &recipe,
        read_trained(start_dir.path()).expect("export"),
        &device,
    )
    .expect("stage");
    assert!(
        stage
            .variables()
            .iter()
            .all(|(name, _)| !name.starts_with("encoder."))
    );
    let rows = train(&stage, &options(dir.path(), 30, None, false)).rows;
    assert_falls(&rows);
    let tuned = read_trained(dir.path()).expect("fine-tuned export");
    assert_eq!(tuned.weights.len(), start.weights.len());
    for (name, before) in &start.weights {
        let after = &tuned.weights[name];
        let change = himmel_core::compare::max_abs_difference(before, after).expect("same shapes");
        let fixed = name.starts_with("encoder.") || name.starts_with("quant_conv.");
        assert_eq!(fixed, change == 0.0, "{name} changed by {change}");
    }

    let mut other = autoencoder_recipe(30);
    other.autoencoder.z_dim = 8;
    let Err(error) = AutoencoderStage::fine_tune(&other, start, &device) else {
        panic!("a start of another architecture was accepted")
    };
    assert!(error.to_string().contains("architecture"), "{error}");
}

#[test]
fn a_decoder_and_its_judge_train_side_by_side_and_resume_exactly() {
    let device = Device::Cpu;
    let start_dir = tiny_autoencoder(&device);
    let start = || read_trained(start_dir.path()).expect("autoencoder export");

    let mut recipe = autoencoder_recipe(40);
    recipe.decoder_only = true;
    recipe.adversarial_weight = 0.1;
    recipe.adversarial_start = 3;
    let stage = || AutoencoderStage::fine_tune(&recipe, start(), &device).expect("stage");
    let judged = stage();
    let names: Vec<&str> = judged.variables().iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"discriminator.layers.0.weight"),
        "{names:?}"
    );
    let dir = tempfile::tempdir().expect("temporary folder");
    let whole = train(&judged, &options(dir.path(), 40, Some(9), false));
    assert!(whole.rows.iter().all(|row| row.loss.is_finite()));
    let names = |weights: std::collections::HashMap<String, _>| {
        let mut names: Vec<String> = weights.into_keys().collect();
        names.sort();
        names
    };
    let tuned = read_trained(dir.path()).expect("fine-tuned export");
    assert_eq!(
        names(tuned.weights),
        names(start().weights),
        "the judge is not exported"
    );
    assert_resumes_exactly(stage, &whole);

    let mut stills = recipe.clone();
    stills.crop.frames = 1;
    let Err(error) = AutoencoderStage::fine_tune(&stills, start(), &device) else {
        panic!("an adversary over single frames was accepted")
    };
    assert!(error.to_string().contains("pairs of frames"), "{error}");
}

#[test]
fn a_widened_decoder_starts_where_it_was_and_drops_into_a_model() {
    let device = Device::Cpu;
    let start_dir = tiny_autoencoder(&device);
    let start = || read_trained(start_dir.path()).expect("autoencoder export");
    let mut narrow = autoencoder_recipe(20);
    narrow.decoder_only = true;
    let mut wider = narrow.clone();
    wider.autoencoder.decoder_base_dim = Some(8);
    let first_loss = |recipe: &AutoencoderRecipe| {
        let stage = AutoencoderStage::fine_tune(recipe, start(), &device).expect("stage");
        let dir = tempfile::tempdir().expect("temporary folder");
        train(&stage, &options(dir.path(), 20, Some(1), false)).rows[0].loss
    };
    // Widened, the decoder decodes as it did: the first step's loss is the narrow one's.
    let (before, after) = (first_loss(&narrow), first_loss(&wider));
    assert!(
        (before - after).abs() < 1e-5 * before,
        "{before} vs {after}"
    );

    let dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::fine_tune(&wider, start(), &device).expect("stage");
    let rows = train(&stage, &options(dir.path(), 20, None, false)).rows;
    assert_falls(&rows);
    let widened = read_trained(dir.path()).expect("widened export");
    assert_eq!(widened.config.decoder_dim(), 8);
    assert_eq!(widened.weights["decoder.conv_in.weight"].dims()[0], 8);

    // A model over the narrow decoder takes the wider one, and its export keeps it.
    let recipe = denoiser_recipe(3);
    let head_dir = tempfile::tempdir().expect("temporary folder");
    let fresh = DenoiserStage::new(&recipe, start(), &device).expect("stage");
    train(&fresh, &unaveraged(head_dir.path(), 3, 3, 0));
    let model = read_model(&head_dir.path().join("model")).expect("model export");
    let stage = DenoiserStage::from_model(&recipe, model, Some(widened), &device).expect("stage");
    let carried_dir = tempfile::tempdir().expect("temporary folder");
    train(&stage, &unaveraged(carried_dir.path(), 3, 3, 3));
    let carried = read_model(&carried_dir.path().join("model")).expect("export");
    assert_eq!(carried.config.autoencoder.decoder_base_dim, Some(8));

    // Only halves twice as wide are widened.
    let mut odd = narrow.clone();
    odd.autoencoder.decoder_base_dim = Some(12);
    let Err(error) = AutoencoderStage::fine_tune(&odd, start(), &device) else {
        panic!("a decoder three times as wide was accepted")
    };
    assert!(error.to_string().contains("twice"), "{error}");
}

#[test]
fn an_autoencoder_learns_to_halve_time_less_from_one_that_halves_it_more() {
    let device = Device::Cpu;
    let start_dir = tiny_autoencoder(&device);
    let start = || read_trained(start_dir.path()).expect("autoencoder export");
    assert_eq!(start().config.temporal_factor(), 4);
    let mut recipe = autoencoder_recipe(20);
    recipe.autoencoder.temperal_downsample = vec![false, true, false];
    let stage = AutoencoderStage::fine_tune(&recipe, start(), &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    assert_falls(&train(&stage, &options(dir.path(), 20, None, false)).rows);
    let tuned = read_trained(dir.path()).expect("export");
    assert_eq!(tuned.config.temporal_factor(), 2);
    // The last stage's time convolutions are gone; everything else carried over.
    let before = start().weights;
    let dropped: Vec<&String> = before
        .keys()
        .filter(|name| !tuned.weights.contains_key(*name))
        .collect();
    assert!(
        !dropped.is_empty() && dropped.iter().all(|name| name.contains("time_conv")),
        "{dropped:?}"
    );
    assert!(tuned.weights.keys().all(|name| before.contains_key(name)));
    let builder = candle_nn::VarBuilder::from_tensors(tuned.weights, DType::F32, &device);
    let autoencoder = WanVae::new(&tuned.config, builder).expect("autoencoder");
    let clip = Tensor::zeros((1, 3, 5, 16, 16), DType::F32, &device).expect("clip");
    let latents = autoencoder.encode(&clip).expect("encoding");
    assert_eq!(latents.dim(2).expect("frames"), 3);

    // Frames weighed by their place in a latent frame's group: one weight per frame it
    // stands for.
    let mut weighed = recipe.clone();
    weighed.frame_weights = vec![2.0, 1.0];
    let stage = AutoencoderStage::fine_tune(&weighed, start(), &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    assert_falls(&train(&stage, &options(dir.path(), 20, None, false)).rows);
    weighed.frame_weights = vec![2.0, 1.5, 1.0, 1.0];
    let Err(error) = AutoencoderStage::fine_tune(&weighed, start(), &device) else {
        panic!("four frame weights for two frames a latent frame were accepted")
    };
    assert!(error.to_string().contains("frame_weights"), "{error}");

    // Switching a stage on is another architecture: the start has no weights for it.
    let halved_less = read_trained(dir.path()).expect("export");
    let Err(error) = AutoencoderStage::fine_tune(&autoencoder_recipe(20), halved_less, &device)
    else {
        panic!("an autoencoder halving time more was accepted")
    };
    assert!(error.to_string().contains("architecture"), "{error}");
}

#[test]
fn a_decoder_learns_from_a_models_predicted_latents_and_resumes_exactly() {
    let device = Device::Cpu;
    let autoencoder_dir = tiny_autoencoder(&device);
    let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
    let stage = DenoiserStage::new(&denoiser_recipe(3), trained, &device).expect("stage");
    let denoiser_dir = tempfile::tempdir().expect("temporary folder");
    train(&stage, &options(denoiser_dir.path(), 3, None, false));
    let model_dir = denoiser_dir.path().join("model");
    let model = || read_model(&model_dir).expect("model export");

    let mut recipe = autoencoder_recipe(40);
    recipe.denoised_latents = 0.3;
    let message = |recipe: &AutoencoderRecipe| match AutoencoderStage::fine_tune_on_predictions(
        recipe,
        model(),
        &device,
    ) {
        Ok(_) => panic!("an inconsistent recipe was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(message(&recipe).contains("decoder_only"));
    recipe.decoder_only = true;
    recipe.crop.frames = 1;
    assert!(message(&recipe).contains("crop.frames"));
    // Crops of half the width and height: on the latent grid, one latent cell across.
    recipe.crop = Crop {
        width: 8,
        height: 8,
        frames: VIDEO.frames,
    };
    recipe.stills = 2;
    assert!(message(&recipe).contains("stills"));
    recipe.stills = 0;
    let Err(error) = AutoencoderStage::fine_tune(&recipe, model().autoencoder(), &device) else {
        panic!("denoised_latents without a model was accepted")
    };
    assert!(error.to_string().contains("model"), "{error}");

    let stage =
        || AutoencoderStage::fine_tune_on_predictions(&recipe, model(), &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    let whole = train(&stage(), &options(dir.path(), 40, None, false));
    assert_falls(&whole.rows);
    assert_resumes_exactly(stage, &whole);
    // Only the decoder side changed.
    let start = model().autoencoder();
    let tuned = read_trained(dir.path()).expect("fine-tuned export");
    for (name, before) in &start.weights {
        let change = himmel_core::compare::max_abs_difference(before, &tuned.weights[name])
            .expect("same shapes");
        let fixed = name.starts_with("encoder.") || name.starts_with("quant_conv.");
        assert_eq!(fixed, change == 0.0, "{name} changed by {change}");
    }
}

#[test]
fn the_denoiser_learns_and_resumes_exactly() {
    let device = Device::Cpu;
    let autoencoder_dir = tiny_autoencoder(&device);

    let recipe = denoiser_recipe(40);
    let stage = || {
        let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
        DenoiserStage::new(&recipe, trained, &device).expect("stage")
    };
    let dir = tempfile::tempdir().expect("temporary folder");
    let whole = train(&stage(), &options(dir.path(), 40, None, false));
    assert_falls(&whole.rows);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model/config.json")).expect("model config"),
    )
    .expect("JSON");
    // The first latent frame got its own statistics, one per latent channel.
    let first = &config["autoencoder"]["first_frame_latents"];
    assert_eq!(first["std"].as_array().map(Vec::len), Some(4), "{first}");

    assert_resumes_exactly(stage, &whole);
}

#[test]
fn a_denoiser_predicting_clean_latents_at_shifted_noise_levels_learns() {
    let device = Device::Cpu;
    let autoencoder_dir = tiny_autoencoder(&device);
    let trained = || read_trained(autoencoder_dir.path()).expect("autoencoder export");
    let mut recipe = denoiser_recipe(40);
    recipe.prediction = Prediction::Sample;
    let unshifted = DenoiserStage::new(&recipe, trained(), &device).expect("stage");
    let unshifted_dir = tempfile::tempdir().expect("temporary folder");
    let first = train(
        &unshifted,
        &options(unshifted_dir.path(), 40, Some(1), false),
    )
    .rows;

    recipe.sigma_shift = 3.0;
    let stage = DenoiserStage::new(&recipe, trained(), &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    let run = train(&stage, &options(dir.path(), 40, None, false));
    assert_falls(&run.rows);
    // Same clips, prompts and noise: only the noise levels moved.
    assert_ne!(run.rows[0].loss, first[0].loss);
    let model = read_model(&dir.path().join("model")).expect("model export");
    assert_eq!(model.config.prediction, Prediction::Sample);

    recipe.sigma_shift = 0.0;
    let Err(error) = DenoiserStage::new(&recipe, trained(), &device) else {
        panic!("a shift of 0 was accepted")
    };
    assert!(error.to_string().contains("sigma_shift"), "{error}");
    recipe.sigma_shift = 3.0;
    for range in [[0.5, 0.5], [-0.1, 0.9], [0.9, 1.1]] {
        recipe.sigma_range = range;
        let Err(error) = DenoiserStage::new(&recipe, trained(), &device) else {
            panic!("the noise levels {range:?} were accepted")
        };
        assert!(error.to_string().contains("sigma_range"), "{error}");
    }
    // An expert trains at its own noise levels only: same clips, prompts and noise.
    recipe.sigma_range = [0.95, 1.0];
    let expert = DenoiserStage::new(&recipe, trained(), &device).expect("stage");
    let expert_dir = tempfile::tempdir().expect("temporary folder");
    let expert_run = train(&expert, &options(expert_dir.path(), 40, Some(1), false)).rows;
    assert_ne!(expert_run[0].loss, run.rows[0].loss);
    recipe.sigma_range = [0.0, 1.0];
    // A run exports one denoiser: a recipe cannot name an experts' boundary.
    recipe.sigma_shift = 1.0;
    recipe.sampling.boundary = Some(0.9);
    let Err(error) = DenoiserStage::new(&recipe, trained(), &device) else {
        panic!("a boundary was accepted")
    };
    assert!(
        error.to_string().contains("himmel train experts"),
        "{error}"
    );
}

#[test]
fn a_denoiser_trains_on_clips_of_many_shapes() {
    let wide = VideoShape { width: 24, ..VIDEO };
    let image = VideoShape { frames: 1, ..VIDEO };
    // Clip i has shape i mod 3; a batch is of one shape.
    let clips = ClipSource::world_shapes(&[VIDEO, wide, image], 9, None);
    let device = Device::Cpu;
    let dims = |indices: [u64; 2]| clips.batch(indices, &device).unwrap().video.dims().to_vec();
    assert_eq!(dims([0, 3]), [2, 3, 5, 16, 16]);
    assert_eq!(dims([1, 4]), [2, 3, 5, 16, 24]);
    assert_eq!(dims([2, 5]), [2, 3, 1, 16, 16]);

    let autoencoder_dir = tiny_autoencoder(&device);
    let trained = || read_trained(autoencoder_dir.path()).expect("autoencoder export");
    let mut recipe = denoiser_recipe(40);
    recipe.more_shapes = vec![wide, image];
    let stage = || DenoiserStage::new(&recipe, trained(), &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    let whole = train(&stage(), &options(dir.path(), 40, None, false));
    // Steps take the shapes in turn; the images' losses (every third step) vary too much to
    // follow in 40 steps.
    let clips: Vec<LogRow> = whole
        .rows
        .iter()
        .filter(|row| (row.step - 1) % 3 != 2)
        .cloned()
        .collect();
    assert_falls(&clips);
    // The model's own size stays `video`'s.
    let model = read_model(&dir.path().join("model")).expect("model export");
    assert_eq!(model.config.video, VIDEO);
    assert_resumes_exactly(stage, &whole);

    let refused = |recipe: &DenoiserRecipe, name: &str| {
        let Err(error) = DenoiserStage::new(recipe, trained(), &device) else {
            panic!("{name} was accepted: {:?}", recipe.more_shapes)
        };
        assert!(error.to_string().contains(name), "{error}");
    };
    for bad in [
        VideoShape { width: 20, ..VIDEO },
        VideoShape { frames: 4, ..VIDEO },
        VideoShape { fps: 16.0, ..VIDEO },
    ] {
        recipe.more_shapes = vec![bad];
        refused(&recipe, "more_shapes");
    }
    recipe.more_shapes = vec![wide, image];
    recipe.pool_clips = 2;
    refused(&recipe, "pool_clips");
    recipe.pool_clips = 8;
    recipe.folder = Some(autoencoder_dir.path().to_path_buf());
    refused(&recipe, "more_shapes");
}

#[test]
fn a_denoiser_recipe_draws_its_scenes_by_its_mix() {
    let device = Device::Cpu;
    let lone = SceneMix {
        objects: [1.0, 0.0, 0.0, 0.0],
        static_camera: 1.0,
    };
    let mut recipe = denoiser_recipe(4);
    recipe.scenes = Some(lone);
    let clips = recipe.clip_source().expect("world clips");
    let batch = clips.batch(0..8, &device).expect("clips");
    for scene in &batch.scenes {
        let scene = scene.as_ref().expect("world clips have scenes");
        assert_eq!(scene.objects.len(), 1);
        assert_eq!(scene.camera, CameraMotion::Static);
    }

    let autoencoder_dir = tiny_autoencoder(&device);
    let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
    recipe.scenes = Some(SceneMix {
        objects: [0.0; 4],
        ..lone
    });
    let Err(error) = DenoiserStage::new(&recipe, trained, &device) else {
        panic!("a mix without weights was accepted")
    };
    assert!(error.to_string().contains("scenes"), "{error}");
    recipe.scenes = Some(lone);
    recipe.folder = Some(autoencoder_dir.path().to_path_buf());
    let Err(error) = recipe.clip_source() else {
        panic!("a mix for a folder's clips was accepted")
    };
    assert!(error.to_string().contains("scenes"), "{error}");
}

#[test]
fn an_autoencoder_export_carries_its_run_on() {
    let device = Device::Cpu;
    let recipe = autoencoder_recipe(12);
    let whole_dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::new(&recipe, &device).expect("stage");
    let whole = train(&stage, &unaveraged(whole_dir.path(), 12, 8, 0));

    let head_dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::new(&recipe, &device).expect("stage");
    train(&stage, &unaveraged(head_dir.path(), 12, 4, 0));
    let export = read_trained(head_dir.path()).expect("export");
    assert_eq!(export.step, Some(4));

    let tail_dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::fine_tune(&recipe, export, &device).expect("stage");
    let tail = train(&stage, &unaveraged(tail_dir.path(), 12, 8, 4));
    assert_eq!(tail.first_step, 4);
    assert_eq!(tail.rows[0].step, 5);
    // The same weights give the same loss; fresh moments warm the learning rate up again.
    assert_eq!(tail.rows[0].loss, whole.rows[4].loss);
    let ratio = tail.rows[0].learning_rate / whole.rows[4].learning_rate;
    assert!((ratio - 1.0 / 3.0).abs() < 1e-9, "{ratio}");
    assert_eq!(tail.rows[3].learning_rate, whole.rows[7].learning_rate);
}

#[test]
fn a_denoiser_goes_on_from_its_model() {
    let device = Device::Cpu;
    let autoencoder_dir = tiny_autoencoder(&device);
    let recipe = denoiser_recipe(20);
    let fresh = || {
        let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
        DenoiserStage::new(&recipe, trained, &device).expect("stage")
    };
    let whole_dir = tempfile::tempdir().expect("temporary folder");
    let whole = train(&fresh(), &unaveraged(whole_dir.path(), 20, 8, 0));
    let head_dir = tempfile::tempdir().expect("temporary folder");
    train(&fresh(), &unaveraged(head_dir.path(), 20, 5, 0));

    let model_dir = head_dir.path().join("model");
    let model = read_model(&model_dir).expect("model export");
    assert_eq!((model.step, model.autoencoder_step), (Some(5), Some(3)));
    // The model's own autoencoder counts as a decoder for its encoder.
    let decoder = read_trained(&model_dir).expect("the model's autoencoder");
    let stage = DenoiserStage::from_model(&recipe, model, Some(decoder), &device).expect("stage");
    let tail_dir = tempfile::tempdir().expect("temporary folder");
    let tail = train(&stage, &unaveraged(tail_dir.path(), 20, 8, 5));
    assert_eq!(tail.rows[0].step, 6);
    // The model is stored in f16 (every weight rounded by up to 2^-11 of itself), so the loss
    // agrees to about that precision (0.11% here), while the losses of neighbouring steps differ
    // by 5% or more.
    let (went_on, uninterrupted) = (tail.rows[0].loss, whole.rows[5].loss);
    let error = (went_on - uninterrupted).abs() / uninterrupted;
    assert!(error < 2e-3, "{went_on} vs {uninterrupted}");
    let exported = read_model(&tail_dir.path().join("model")).expect("export");
    assert_eq!(exported.step, Some(8));

    // A finished run trains no more but exports again, with the decoder it is given.
    let finished_dir = tempfile::tempdir().expect("temporary folder");
    let decoder = read_trained(&model_dir).expect("the model's autoencoder");
    let stage =
        DenoiserStage::from_model(&recipe, exported, Some(decoder), &device).expect("stage");
    let finished = train(&stage, &unaveraged(finished_dir.path(), 8, 8, 8));
    assert!(finished.rows.is_empty());
    let carried = read_model(&finished_dir.path().join("model")).expect("export");
    assert_eq!((carried.step, carried.autoencoder_step), (Some(8), Some(3)));

    // A decoder of another encoder, or another architecture, is refused.
    let other_dir = tempfile::tempdir().expect("temporary folder");
    let mut other_recipe = autoencoder_recipe(2);
    other_recipe.run.seed = 70;
    let other = AutoencoderStage::new(&other_recipe, &device).expect("stage");
    train(&other, &options(other_dir.path(), 2, None, false));
    let model = || read_model(&model_dir).expect("model export");
    let other = read_trained(other_dir.path()).expect("export");
    let Err(error) = DenoiserStage::from_model(&recipe, model(), Some(other), &device) else {
        panic!("a decoder of another encoder was accepted")
    };
    assert!(error.to_string().contains("another encoder"), "{error}");
    let mut deeper = denoiser_recipe(20);
    deeper.denoiser.num_layers = 3;
    let Err(error) = DenoiserStage::from_model(&deeper, model(), None, &device) else {
        panic!("a recipe of another architecture was accepted")
    };
    assert!(error.to_string().contains("architecture"), "{error}");
}

#[test]
fn a_denoiser_deepens_where_it_is() {
    let device = Device::Cpu;
    let autoencoder_dir = tiny_autoencoder(&device);
    let recipe = denoiser_recipe(12);
    let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
    let stage = DenoiserStage::new(&recipe, trained, &device).expect("stage");
    let model_dir = tempfile::tempdir().expect("temporary folder");
    train(&stage, &unaveraged(model_dir.path(), 12, 5, 0));
    let model = || read_model(&model_dir.path().join("model")).expect("model export");

    let as_deep = DenoiserStage::from_model(&recipe, model(), None, &device).expect("stage");
    let as_deep_dir = tempfile::tempdir().expect("temporary folder");
    let as_deep = train(&as_deep, &unaveraged(as_deep_dir.path(), 12, 1, 0)).rows;
    let mut deeper = recipe.clone();
    deeper.denoiser.num_layers = 4;
    let stage = DenoiserStage::deepened(&deeper, model(), &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    let run = train(&stage, &unaveraged(dir.path(), 12, 12, 0));
    // The new blocks start as the identity: the first loss is the model's own.
    let (deepened, own) = (run.rows[0].loss, as_deep[0].loss);
    assert!((deepened - own).abs() <= 1e-5 * own, "{deepened} vs {own}");
    // ... and then learn.
    let export = read_model(&dir.path().join("model")).expect("export");
    assert_eq!(export.config.denoiser.num_layers, 4);
    let output = &export.weights["denoiser.blocks.3.ffn.net.2.weight"];
    let magnitude = output.abs().unwrap().max_all().unwrap();
    assert!(magnitude.to_scalar::<f32>().unwrap() > 0.0);

    // Only deeper, and otherwise the model's architecture.
    let Err(error) = DenoiserStage::deepened(&recipe, model(), &device) else {
        panic!("a recipe as deep as the model was deepened")
    };
    assert!(error.to_string().contains("num_layers"), "{error}");
    deeper.denoiser.ffn_dim = 64;
    let Err(error) = DenoiserStage::deepened(&deeper, model(), &device) else {
        panic!("a recipe of another width was accepted")
    };
    assert!(error.to_string().contains("architecture"), "{error}");
}

#[test]
fn a_denoiser_refines_its_patches() {
    let device = Device::Cpu;
    let autoencoder_dir = tiny_autoencoder(&device);
    let mut coarse = denoiser_recipe(6);
    coarse.denoiser.patch_size = [1, 2, 2];
    let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
    let stage = DenoiserStage::new(&coarse, trained, &device).expect("stage");
    let model_dir = tempfile::tempdir().expect("temporary folder");
    train(&stage, &unaveraged(model_dir.path(), 6, 6, 0));
    let model = || read_model(&model_dir.path().join("model")).expect("model export");

    let fine = denoiser_recipe(6);
    let stage = DenoiserStage::refined(&fine, model(), &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    let run = train(&stage, &unaveraged(dir.path(), 6, 6, 0));
    assert!(run.rows.iter().all(|row| row.loss.is_finite()));
    let export = read_model(&dir.path().join("model")).expect("export");
    assert_eq!(export.config.denoiser.patch_size, [1, 1, 1]);
    // The blocks start from the model's.
    let (start, own) = (
        &export.weights["denoiser.blocks.0.attn1.to_q.weight"],
        &model().weights["denoiser.blocks.0.attn1.to_q.weight"],
    );
    let moved = (start - own).unwrap().abs().unwrap().max_all().unwrap();
    assert!(moved.to_scalar::<f32>().unwrap() < 0.05);

    // Only patches that divide the model's, and otherwise its architecture.
    let Err(error) = DenoiserStage::refined(&coarse, model(), &device) else {
        panic!("the model's own patches were refined")
    };
    assert!(error.to_string().contains("patch_size"), "{error}");
    let mut wider = fine.clone();
    wider.denoiser.ffn_dim = 64;
    let Err(error) = DenoiserStage::refined(&wider, model(), &device) else {
        panic!("a recipe of another width was accepted")
    };
    assert!(error.to_string().contains("architecture"), "{error}");
}

#[test]
fn a_denoiser_moves_to_a_new_encoder() {
    let device = Device::Cpu;
    let autoencoder_dir = tiny_autoencoder(&device);
    let recipe = denoiser_recipe(8);
    let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
    let stage = DenoiserStage::new(&recipe, trained, &device).expect("stage");
    let model_dir = tempfile::tempdir().expect("temporary folder");
    train(&stage, &unaveraged(model_dir.path(), 8, 4, 0));
    let model = || read_model(&model_dir.path().join("model")).expect("model export");

    // Another autoencoder run: its encoder is not the model's.
    let newer_dir = tempfile::tempdir().expect("temporary folder");
    let mut newer_recipe = autoencoder_recipe(2);
    newer_recipe.run.seed = 70;
    let newer = AutoencoderStage::new(&newer_recipe, &device).expect("stage");
    train(&newer, &options(newer_dir.path(), 2, None, false));
    let newer = || read_trained(newer_dir.path()).expect("export");

    // Every weight is the model's but the patch layers, carried onto the new latents.
    let carried_from_model = |moved: &DenoiserStage| {
        let start = model();
        for (name, var) in moved.variables() {
            let carried = [
                "denoiser.patch_embedding.weight",
                "denoiser.proj_out.weight",
                "denoiser.proj_out.bias",
            ]
            .contains(&name.as_str());
            if let Some(weight) = start.weights.get(name)
                && weight.dims() == var.as_tensor().dims()
            {
                let difference = (var.as_tensor() - weight)
                    .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                    .expect("difference");
                assert_eq!(difference == 0.0, !carried, "{name}");
            } else {
                assert!(carried, "{name}");
            }
        }
        let fit = moved.token_fit().expect("a map was fitted");
        assert!(fit.is_finite() && fit <= 1.0 + 1e-9, "{fit}");
    };

    let moved = DenoiserStage::warm_start(&recipe, newer(), model(), &device).expect("stage");
    carried_from_model(&moved);
    // Latent statistics as a fresh stage on the new autoencoder measures them ...
    let fresh = DenoiserStage::new(&recipe, newer(), &device).expect("stage");
    let (measured, fresh) = (&moved.config().autoencoder, &fresh.config().autoencoder);
    assert_eq!(measured.latents_mean, fresh.latents_mean);
    assert_eq!(measured.latents_std, fresh.latents_std);
    assert_ne!(
        measured.latents_mean,
        model().config.autoencoder.latents_mean
    );
    // ... with the model's vocabulary.
    assert_eq!(moved.config().vocabulary, model().config.vocabulary);
    let moved_dir = tempfile::tempdir().expect("temporary folder");
    let summary = train(&moved, &unaveraged(moved_dir.path(), 8, 3, 0));
    assert_eq!(summary.rows[0].step, 1);
    assert!(summary.rows.iter().all(|row| row.loss.is_finite()));
    let exported = read_model(&moved_dir.path().join("model")).expect("export");
    assert_eq!(
        (exported.step, exported.autoencoder_step),
        (Some(3), Some(2))
    );

    // An autoencoder twice as fine in space with other latent channels: with patches twice as
    // large each token stands for the same pixels; the patch layers are carried onto the new
    // tokens by a fitted map, the rest is the model's.
    let mut finer_recipe = autoencoder_recipe(1);
    finer_recipe.autoencoder.z_dim = 6;
    finer_recipe.autoencoder.spatial_downsample = Some(vec![true, true, false]);
    let finer_dir = tempfile::tempdir().expect("temporary folder");
    let finer = AutoencoderStage::new(&finer_recipe, &device).expect("stage");
    train(&finer, &options(finer_dir.path(), 1, None, false));
    let finer = || read_trained(finer_dir.path()).expect("export");
    let Err(error) = DenoiserStage::warm_start(&recipe, finer(), model(), &device) else {
        panic!("tokens over other pixels were accepted")
    };
    assert!(error.to_string().contains("span [4, 4, 4]"), "{error}");
    let mut larger_patches = recipe.clone();
    larger_patches.denoiser.patch_size = [1, 2, 2];
    let moved =
        DenoiserStage::warm_start(&larger_patches, finer(), model(), &device).expect("stage");
    assert_eq!(moved.config().denoiser.in_channels, 13);
    carried_from_model(&moved);
    let moved_dir = tempfile::tempdir().expect("temporary folder");
    let summary = train(&moved, &unaveraged(moved_dir.path(), 8, 2, 0));
    assert!(summary.rows.iter().all(|row| row.loss.is_finite()));
}

#[test]
fn a_corrupt_checkpoint_is_named() {
    let device = Device::Cpu;
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("checkpoint-0000003.safetensors");
    std::fs::write(&path, b"not a checkpoint").expect("write");
    let stage = AutoencoderStage::new(&autoencoder_recipe(6), &device).expect("stage");
    let error = run(&stage, &options(dir.path(), 6, None, true), &mut |_| {})
        .expect_err("a corrupt checkpoint stops the run");
    assert!(matches!(error, TrainError::Checkpoint { .. }), "{error}");
    assert!(
        error.to_string().contains("checkpoint-0000003.safetensors"),
        "{error}"
    );
}

#[test]
fn a_folder_of_captioned_clips_trains_and_bad_folders_are_named() {
    let device = Device::Cpu;
    let clips = tempfile::tempdir().expect("temporary folder");
    let settings = himmel_world::RenderSettings {
        width: VIDEO.width,
        height: VIDEO.height,
        frames: VIDEO.frames + 2,
        fps: VIDEO.fps,
    };
    for index in 0..3u64 {
        let (clip, record) = himmel_world::sample_clip(5, index, &settings).expect("clip");
        let path = clips.path().join(format!("{index:06}.safetensors"));
        let options = himmel_media::WriteOptions::default();
        himmel_media::write_video(&clip.video, &path, &options, &himmel_core::Silent)
            .expect("write clip");
        if index == 2 {
            std::fs::write(path.with_extension("txt"), record.caption).expect("caption");
        } else {
            let json = serde_json::to_string(&record).expect("record");
            std::fs::write(path.with_extension("json"), json).expect("caption");
        }
    }
    let mut recipe = autoencoder_recipe(3);
    recipe.folder = Some(clips.path().to_path_buf());
    let autoencoder_dir = tempfile::tempdir().expect("temporary folder");
    let stage = AutoencoderStage::new(&recipe, &device).expect("stage");
    train(&stage, &options(autoencoder_dir.path(), 3, None, false));
    recipe.object_crops = 0.5;
    let Err(error) = AutoencoderStage::new(&recipe, &device) else {
        panic!("object crops of clips that do not know their objects")
    };
    assert!(error.to_string().contains("object_crops"), "{error}");

    let mut recipe = denoiser_recipe(3);
    recipe.folder = Some(clips.path().to_path_buf());
    let trained = read_trained(autoencoder_dir.path()).expect("autoencoder export");
    let stage = DenoiserStage::new(&recipe, trained, &device).expect("stage");
    let dir = tempfile::tempdir().expect("temporary folder");
    assert_eq!(
        train(&stage, &options(dir.path(), 3, None, false))
            .rows
            .len(),
        3
    );
    assert!(
        stage
            .config()
            .vocabulary
            .iter()
            .any(|word| word == "camera")
    );

    std::fs::remove_file(clips.path().join("000002.txt")).expect("remove caption");
    let mut recipe = autoencoder_recipe(3);
    recipe.folder = Some(clips.path().to_path_buf());
    let Err(error) = AutoencoderStage::new(&recipe, &device) else {
        panic!("a clip without caption is refused");
    };
    assert!(error.to_string().contains("000002.safetensors"), "{error}");
    let empty = tempfile::tempdir().expect("temporary folder");
    recipe.folder = Some(empty.path().to_path_buf());
    let Err(error) = AutoencoderStage::new(&recipe, &device) else {
        panic!("an empty folder is refused");
    };
    assert!(error.to_string().contains("holds no clips"), "{error}");
}
