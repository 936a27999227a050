//! himmel-mini end to end through the real binary: the recipe's stages train a tiny model,
//! which generates (repeatably, with warnings for what it did not understand), is evaluated,
//! and fails clearly when its weights are broken.

mod common;

use std::path::{Path, PathBuf};

use common::{ffprobe, himmel, himmel_err, himmel_ok};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mini")
}

/// Trains the tiny recipe into `dir` and returns the exported model's folder.
fn train_tiny(dir: &Path) -> PathBuf {
    let autoencoder = dir.join("autoencoder");
    let denoiser = dir.join("denoiser");
    let recipe = |name: &str| fixtures().join(name).to_str().unwrap().to_string();
    himmel_ok(&[
        "train",
        "autoencoder",
        "--config",
        &recipe("autoencoder.toml"),
        "--out",
        autoencoder.to_str().unwrap(),
    ]);
    assert!(autoencoder.join("loss.csv").exists() && autoencoder.join("loss.png").exists());
    himmel_ok(&[
        "train",
        "denoiser",
        "--config",
        &recipe("denoiser.toml"),
        "--autoencoder",
        autoencoder.to_str().unwrap(),
        "--out",
        denoiser.to_str().unwrap(),
    ]);
    denoiser.join("model")
}

#[test]
fn a_trained_model_generates_evaluates_and_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let model = train_tiny(dir.path());
    let model_arg = model.to_str().unwrap();

    let mp4 = dir.path().join("ball.mp4");
    himmel_ok(&[
        "generate",
        "a red ball bounces on the grass",
        "--model",
        model_arg,
        "--seed",
        "3",
        "-o",
        mp4.to_str().unwrap(),
    ]);
    let probe = ffprobe(&mp4, "width,height,nb_read_frames");
    assert!(
        probe.contains("width=32") && probe.contains("nb_read_frames=5"),
        "{probe}"
    );

    // The same seed gives the same frames.
    let frames_with = |name: &str, options: &[&str]| {
        let path = dir.path().join(name);
        let mut args = vec!["generate", "a red ball bounces on the grass", "--model"];
        args.extend([model_arg, "--seed", "3", "-o", path.to_str().unwrap()]);
        args.extend(options);
        himmel_ok(&args);
        std::fs::read(path).unwrap()
    };
    let frames = |name: &str| frames_with(name, &[]);
    assert_eq!(frames("a.safetensors"), frames("b.safetensors"));

    // What the prompt expansion does not understand is named, and a video is still made.
    let strange = dir.path().join("strange.gif");
    let output = himmel(&[
        "generate",
        "a red ball and a flibbertigibbet bounce",
        "--model",
        model_arg,
        "-o",
        strange.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("flibbertigibbet"),
        "{stderr}"
    );
    assert!(strange.exists());

    let report = dir.path().join("eval.json");
    let summary = himmel_ok(&[
        "eval",
        "--model",
        model_arg,
        "--limit",
        "1",
        "--seeds",
        "2",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(summary.contains("colour agreement"), "{summary}");
    assert!(summary.contains("autoencoded"), "{summary}");
    // Which shape each asked shape was seen as, beside ground truth's: a row per shape asked.
    let first_row = summary
        .lines()
        .skip_while(|line| !line.starts_with("shape asked"))
        .nth(1)
        .unwrap_or_default();
    let shapes = ["ball", "cube", "triangle", "star", "ring", "capsule"];
    assert!(
        shapes.iter().any(|shape| first_row.starts_with(shape)),
        "{summary}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["model"]["clips"], 2);
    assert_eq!(json["autoencoded"]["clips"], 2);
    // One prompt, two clips from two seeds.
    let clips = json["prompts"].as_array().unwrap();
    assert_eq!(clips.len(), 2);
    assert_eq!(clips[0]["prompt"], clips[1]["prompt"]);
    assert_eq!(clips[0]["seed"], 0);
    assert_ne!(clips[1]["seed"], 0);
    // A report against itself: every difference 0, with no spread.
    let base = dir.path().join("base.json");
    std::fs::copy(&report, &base).unwrap();
    let (base_arg, report_arg) = (base.to_str().unwrap(), report.to_str().unwrap());
    let comparison = himmel_ok(&["eval", "--compare", base_arg, report_arg]);
    assert!(comparison.contains("2 clips in both"), "{comparison}");
    let asked = comparison
        .lines()
        .find(|line| line.starts_with("clips as asked"))
        .unwrap();
    assert!(asked.ends_with("+0.0000        ±0.0000"), "{comparison}");
    let message = himmel_err(&["eval", "--compare", base_arg, model_arg]);
    assert!(message.contains("eval report"), "{message}");
    let message = himmel_err(&[
        "eval",
        "--model",
        model_arg,
        "--shift",
        "0",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(message.contains("shift"), "{message}");
    // At another size and aspect ratio than the model's, and in single frames (images).
    let size_evaluated = |option: &str, value: &str| {
        let out = report.to_str().unwrap();
        himmel_ok(&[
            "eval", "--model", model_arg, "--limit", "1", option, value, "--out", out,
        ]);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        json["size"].clone()
    };
    assert_eq!(
        size_evaluated("--width", "64"),
        serde_json::json!([64, 32, 5])
    );
    let message = himmel_err(&["eval", "--compare", base_arg, report_arg]);
    assert!(message.contains("scores 2 clips"), "{message}");
    assert_eq!(
        size_evaluated("--frames", "1"),
        serde_json::json!([32, 32, 1])
    );
    let message = himmel_err(&[
        "eval",
        "--model",
        model_arg,
        "--frames",
        "9",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(message.contains("frames"), "{message}");
    let message = himmel_err(&[
        "eval",
        "--model",
        model_arg,
        "--width",
        "33",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(message.contains("width"), "{message}");

    // The model as its own high-noise expert: joined, generated from, measured.
    let pair = dir.path().join("pair");
    let joined = himmel(&[
        "train",
        "experts",
        "--model",
        model_arg,
        "--high-noise",
        model_arg,
        "--boundary",
        "0.9",
        "--out",
        pair.to_str().unwrap(),
    ]);
    assert!(joined.status.success(), "{joined:?}");
    assert!(pair.join("high_noise/model.safetensors").exists());
    let two = dir.path().join("two.safetensors");
    himmel_ok(&[
        "generate",
        "a red ball bounces on the grass",
        "--model",
        pair.to_str().unwrap(),
        "--seed",
        "3",
        "--boundary",
        "0.5",
        "-o",
        two.to_str().unwrap(),
    ]);
    // Both experts are the same model, so the clip is the model's own.
    assert_eq!(std::fs::read(&two).unwrap(), frames("c.safetensors"));
    let summary = himmel_ok(&[
        "eval",
        "--model",
        pair.to_str().unwrap(),
        "--limit",
        "1",
        "--boundary",
        "0.95",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(summary.contains("clips as asked"), "{summary}");
    let message = himmel_err(&[
        "generate",
        "a ball",
        "--model",
        model_arg,
        "--boundary",
        "0.5",
        "-o",
        two.to_str().unwrap(),
    ]);
    assert!(message.contains("no high-noise expert"), "{message}");

    // Skip guidance from the command line: a block the denoiser has changes the clip; one it
    // lacks, or a scale without a block where the model names none, is refused.
    let options = ["--skip-guidance", "2", "--skip-layer", "0"];
    let skipped = frames_with("skipped.safetensors", &options);
    assert_ne!(skipped, frames("c.safetensors"));
    let refused = dir.path().join("refused.safetensors");
    let skip_error = |options: &[&str]| {
        let mut args = vec!["generate", "a ball", "--model", model_arg];
        args.extend(options);
        args.extend(["-o", refused.to_str().unwrap()]);
        himmel_err(&args)
    };
    let message = skip_error(&["--skip-guidance", "2", "--skip-layer", "99"]);
    assert!(message.contains("skip guidance layer"), "{message}");
    let message = skip_error(&["--skip-guidance", "2"]);
    assert!(message.contains("needs a layer"), "{message}");

    // The autoencoder alone: PSNR and the scorer's measures of held-out clips through it.
    let summary = himmel_ok(&[
        "eval",
        "--autoencoder",
        dir.path().join("autoencoder").to_str().unwrap(),
        "--limit",
        "2",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(
        summary.contains("mean PSNR")
            && summary.contains("colour agreement")
            && summary.contains("latent spread by latent frame")
            && summary.contains("PSNR on and next to objects by frame")
            && summary.contains("faults by the frame they show from"),
        "{summary}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let frames = &saved["size"][2];
    for clip in saved["clips"].as_array().unwrap() {
        let by_frame = clip["object_psnr_by_frame"].as_array().unwrap();
        assert_eq!(by_frame.len() as u64, frames.as_u64().unwrap(), "{clip}");
    }
    // Two autoencoders' reports compare clip against clip, as two models' do.
    let comparison = himmel_ok(&["eval", "--compare", report_arg, report_arg]);
    assert!(
        comparison.contains("2 clips in both") && comparison.contains("+0.0000"),
        "{comparison}"
    );
    // Their PSNRs too, clip against clip.
    let psnr = comparison
        .lines()
        .find(|line| line.starts_with("object PSNR (dB)"));
    assert!(
        psnr.is_some_and(|line| line.contains("+0.0000")),
        "{comparison}"
    );

    // Broken weights are named.
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();
    let message = himmel_err(&[
        "generate",
        "a ball",
        "--model",
        model_arg,
        "-o",
        mp4.to_str().unwrap(),
    ]);
    assert!(message.contains("model.safetensors"), "{message}");
}

#[test]
fn training_resumes_and_refuses_bad_recipes() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = fixtures().join("autoencoder.toml");
    let out = dir.path().join("run");
    let base = [
        "train",
        "autoencoder",
        "--config",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let args = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&'static str]| {
        let owned = args(extra);
        let borrowed: Vec<&str> = owned.iter().map(String::as_str).collect();
        himmel_ok(&borrowed);
    };
    run(&["--until", "2"]);
    // A run's export carries it on where its checkpoints are gone: after its step 2, steps 3 and 4 of 4.
    let carried = dir.path().join("carried");
    let export = out.to_str().unwrap();
    himmel_ok(&[
        "train",
        "autoencoder",
        "--config",
        recipe.to_str().unwrap(),
        "--from",
        export,
        "--continue",
        "--out",
        carried.to_str().unwrap(),
    ]);
    let log = std::fs::read_to_string(carried.join("loss.csv")).unwrap();
    let steps: Vec<&str> = log
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').next())
        .collect();
    assert_eq!(steps, ["3", "4"], "{log}");
    // Exports that record no step (made before exports did) cannot be continued.
    let unrecorded = dir.path().join("unrecorded");
    std::fs::create_dir_all(&unrecorded).unwrap();
    std::fs::copy(
        out.join("autoencoder.json"),
        unrecorded.join("autoencoder.json"),
    )
    .unwrap();
    let device = candle_core::Device::Cpu;
    let tensors = candle_core::safetensors::load(out.join("autoencoder.safetensors"), &device);
    candle_core::safetensors::save(
        &tensors.unwrap(),
        unrecorded.join("autoencoder.safetensors"),
    )
    .unwrap();
    let message = himmel_err(&[
        "train",
        "autoencoder",
        "--config",
        recipe.to_str().unwrap(),
        "--from",
        unrecorded.to_str().unwrap(),
        "--continue",
        "--out",
        dir.path().join("never").to_str().unwrap(),
    ]);
    assert!(message.contains("records no training step"), "{message}");
    run(&["--resume"]);
    let log = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "kl_weight = \"much\"\n").unwrap();
    let message = himmel_err(&[
        "train",
        "autoencoder",
        "--config",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(message.contains("bad.toml"), "{message}");
}

/// The acceptance of the built-in model: from a checkout, with no model named, a prompt gives a
/// valid MP4 at the model's size.
#[test]
fn the_built_in_model_works_out_of_the_box() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("ball.mp4");
    himmel_ok(&[
        "generate",
        "a red ball bounces across the grass",
        "-o",
        mp4.to_str().unwrap(),
    ]);
    let probe = ffprobe(&mp4, "width,height,nb_read_frames");
    assert!(
        probe.contains("width=64") && probe.contains("height=64"),
        "{probe}"
    );
    assert!(probe.contains("nb_read_frames=17"), "{probe}");
    // What the model is, read from its folder.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/himmel-mini");
    let info = himmel_ok(&["info", model.to_str().unwrap()]);
    for line in [
        "format: himmel-mini",
        "video: 64x64, 17 frames at 16 fps",
        "predicts clean latents",
        "sampling: 20 steps, guidance 13, shift 4",
        "high-noise expert (high_noise/): from noise level 0.9, guidance 4;",
        "preview: yes",
    ] {
        assert!(info.contains(line), "{line} missing from {info}");
    }
}

#[test]
fn the_built_in_model_is_benchmarked_stage_by_stage() {
    let report = himmel_ok(&["bench", "mini", "--repeat", "1"]);
    for stage in [
        "recaption",
        "encode prompt",
        "denoise",
        "decode",
        "peak memory",
    ] {
        assert!(report.contains(stage), "{report}");
    }
    assert!(report.contains("ms a step"), "{report}");
}
