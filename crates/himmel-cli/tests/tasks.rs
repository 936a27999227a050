//! The editing tasks through the real binary: every task with a tiny random Wan model (the
//! code path real Wan models take), a one-minute himmel-mini video whose memory does not grow
//! with its length and whose window seams are continuous, and clear errors for impossible
//! requests before any work starts.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{ffmpeg, ffprobe, himmel, himmel_err, himmel_ok};
use himmel_core::Silent;
use himmel_pipeline::MiniPipeline;
use himmel_pipeline::mini::builtin_dir;
use himmel_world::render::RenderSettings;
use himmel_world::score::score;

fn frames_of(path: &Path) -> usize {
    let probe = ffprobe(path, "nb_read_frames");
    let count = probe
        .lines()
        .find_map(|line| line.strip_prefix("nb_read_frames="))
        .unwrap_or_else(|| panic!("no frame count for {path:?}: {probe}"));
    count.trim().parse().unwrap()
}

#[test]
fn every_task_runs_with_a_wan_model() {
    let dir = tempfile::tempdir().unwrap();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan/pipeline_tiny");
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let generate = |extra: &[&str], output: &str| {
        let base = [
            "generate",
            "a red ball bounces on the grass",
            "--model",
            model.to_str().unwrap(),
            "--max-sequence-length",
            "16",
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "32",
            "-o",
            output,
        ];
        himmel_ok(&[&base[..], extra].concat());
        frames_of(Path::new(output))
    };
    let clip = out("clip.mp4");
    assert_eq!(generate(&["--frames", "17"], &clip), 17);
    let cases: [(&[&str], usize); 7] = [
        (&["--image", &clip, "--frames", "9"], 9),
        (&["--video", &clip, "--strength", "0.5"], 17),
        (
            &["--video", &clip, "--extend", "forward", "--seconds", "0.5"],
            25,
        ),
        (
            &["--video", &clip, "--extend", "backward", "--seconds", "0.5"],
            25,
        ),
        (&["--loop", "--frames", "21"], 20),
        (&["--connect", &clip, &clip, "--seconds", "0.5"], 10),
        // Longer than Wan's 81-frame window: one window, then an extension.
        (&["--frames", "101"], 101),
    ];
    for (index, (extra, frames)) in cases.into_iter().enumerate() {
        let output = out(&format!("task{index}.mp4"));
        assert_eq!(generate(extra, &output), frames, "{extra:?}");
    }
}

#[test]
fn previews_of_every_step_are_written_as_a_gif() {
    let dir = tempfile::tempdir().unwrap();
    let previews = dir.path().join("previews");
    let out = dir.path().join("out.mp4");
    let output = himmel(&[
        "generate",
        "a red ball rolls to the right on the grass",
        "--preview",
        previews.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let gif = previews.join("preview.gif");
    // One frame per latent frame, each latent cell 32x32 pixels.
    let probe = ffprobe(&gif, "width,height,nb_read_frames");
    assert!(
        probe.contains("width=256")
            && probe.contains("height=256")
            && probe.contains("nb_read_frames=5"),
        "{probe}"
    );
    // A model without a stored projection gets one fitted.
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan/pipeline_tiny");
    let output = himmel(&[
        "generate",
        "a ball",
        "--model",
        model.to_str().unwrap(),
        "--max-sequence-length",
        "16",
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "32",
        "--frames",
        "5",
        "--preview",
        previews.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.contains("fitted a preview projection"),
        "{stderr}"
    );
    assert!(ffprobe(&gif, "nb_read_frames").contains("nb_read_frames=2"));
}

#[test]
fn impossible_tasks_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let out = path("out.mp4");
    let still = path("still.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=64x64",
        "-frames:v",
        "1",
        still.to_str().unwrap(),
    ]);
    let not_an_image = path("notes.png");
    std::fs::write(&not_an_image, "not a picture").unwrap();
    let run = |extra: &[&str]| {
        let args = [
            &["generate", "a red ball", "-o", out.to_str().unwrap()][..],
            extra,
        ]
        .concat();
        himmel_err(&args)
    };
    let unreadable = run(&["--image", not_an_image.to_str().unwrap()]);
    assert!(
        unreadable.contains("cannot read") && unreadable.contains("notes.png"),
        "{unreadable}"
    );
    let missing = run(&["--connect", "nowhere-a.mp4", "nowhere-b.mp4"]);
    assert!(missing.contains("nowhere-a.mp4"), "{missing}");
    let short = run(&["--video", still.to_str().unwrap(), "--extend", "forward"]);
    assert!(
        short.contains("has 1 frames; it needs at least 5"),
        "{short}"
    );
    let strength = run(&["--video", still.to_str().unwrap(), "--strength", "1.5"]);
    assert!(
        strength.contains("--strength must be between 0 and 1"),
        "{strength}"
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[category]]\nid = \"balls\"\nany = [\"red ball\"]\n",
    )
    .unwrap();
    let refused = run(&["--policy", policy.to_str().unwrap()]);
    assert!(
        refused.contains("refused by the content policy: balls"),
        "{refused}"
    );
    let relaxing = dir.path().join("relax.toml");
    std::fs::write(
        &relaxing,
        "[[category]]\nid = \"sexual_minors\"\nenabled = false\n",
    )
    .unwrap();
    let not_relaxed = run(&["--policy", relaxing.to_str().unwrap()]);
    assert!(not_relaxed.contains("always refused"), "{not_relaxed}");
    let too_long = run(&["--seconds", "500"]);
    assert!(
        too_long.contains("at most 1920 (120 seconds)"),
        "{too_long}"
    );
    assert!(!out.exists());
}

/// Peak memory from the binary's closing line (`... peak memory N MiB`).
fn peak_memory(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|line| line.contains("peak memory"))
        .unwrap_or_else(|| panic!("no peak memory in {stderr}"));
    let value = line.rsplit("peak memory ").next().unwrap();
    value.trim_end_matches(" MiB").parse().unwrap()
}

#[test]
fn a_minute_of_himmel_mini_in_flat_memory_with_continuous_seams() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "a red ball rolls to the right on the grass";
    let make = |seconds: &str, format: &str| -> (PathBuf, f64) {
        let path = dir.path().join(format!("{seconds}s.{format}"));
        let output = himmel(&[
            "generate",
            prompt,
            "--seconds",
            seconds,
            "-o",
            path.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        (path, peak_memory(&stderr))
    };
    let (_, short) = make("10", "mp4");
    let (_, long) = make("60", "mp4");
    println!("peak memory: 10 s {short} MiB, 60 s {long} MiB");
    assert!(
        (long - short).abs() <= 0.1 * short,
        "10 s {short} MiB, 60 s {long} MiB"
    );

    // The seams are scored on raw frames: the MP4's watermark differs from run to run, and so
    // would the faint specks the scorer finds in it.
    let (minute, _) = make("60", "safetensors");
    let video = himmel_media::read_video(&minute, &Default::default(), &Silent).unwrap();
    assert_eq!(video.num_frames(), 961);
    // The scene the binary captioned (same prompt, size and seed).
    let pipeline = MiniPipeline::load(&builtin_dir(), &Device::Cpu).unwrap();
    let settings = RenderSettings {
        width: 64,
        height: 64,
        frames: 17,
        fps: 16.0,
    };
    let spec = pipeline.recaption(prompt, &settings, 0).unwrap().spec;
    // The first window has 17 frames, every later one adds 12 (its 5 known frames before
    // them). A fault at a seam shows in the 9 frames around it; the spans 5 to 7 frames on
    // hold no seam, and show the model's own flicker.
    let seams: Vec<usize> = (17..video.num_frames() - 10).step_by(12).collect();
    let faults_around = |centre: usize| {
        let around = video.frames().narrow(0, centre - 4, 9).unwrap();
        let around = himmel_core::Video::new(around, video.fps()).unwrap();
        let faults = score(&around, &spec).unwrap().faults;
        faults.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let faulty = |offset: usize| -> Vec<(usize, Vec<String>)> {
        seams
            .iter()
            .map(|&seam| (seam + offset, faults_around(seam + offset)))
            .filter(|(_, faults)| !faults.is_empty())
            .collect()
    };
    let at_seams = faulty(0);
    let away: Vec<usize> = (5..=7).map(|offset| faulty(offset).len()).collect();
    let clean = 1.0 - at_seams.len() as f64 / seams.len() as f64;
    println!(
        "{} seams, {:.0}% without faults; spans with faults 5, 6 and 7 frames on: {away:?}; at \
         seams: {at_seams:?}",
        seams.len(),
        clean * 100.0,
    );
    // The figure (95% on 2026-12-05, nineteenth session), and seams that add no faults
    // beyond the model's own flicker away from them, give or take 2.
    assert!(clean >= 0.9, "{at_seams:?}");
    let most_away = away.into_iter().max().unwrap();
    assert!(
        at_seams.len() <= most_away + 2,
        "{at_seams:?} against at most {most_away} away from seams"
    );
}
