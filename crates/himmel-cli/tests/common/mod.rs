//! Helpers for end-to-end tests: run the real `himmel` binary, and ffmpeg/ffprobe as the
//! independent reference decoder and encoder.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `himmel` with `args` (quietly) and returns its output.
pub fn himmel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_himmel"))
        .env("HIMMEL_HOME", test_home())
        .arg("--quiet")
        .args(args)
        .output()
        .expect("the himmel binary runs")
}

/// Where the tests' `himmel` keeps its local C2PA signing pair (not the user's home).
pub fn test_home() -> std::path::PathBuf {
    std::env::temp_dir().join("himmel-tests-home")
}

/// Runs `himmel` and asserts it succeeded.
pub fn himmel_ok(args: &[&str]) -> String {
    let output = himmel(args);
    assert!(
        output.status.success(),
        "himmel {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `himmel`, asserts it failed with exit code 1 and no panic, and returns stderr.
pub fn himmel_err(args: &[&str]) -> String {
    let output = himmel(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "himmel {args:?} should fail cleanly: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "himmel {args:?} panicked: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// Runs ffmpeg (quietly) with `args`, panicking with its message on failure.
pub fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Makes an ffmpeg `testsrc2` clip encoded with `codec_args` (e.g. libx264 high profile).
pub fn make_clip(path: &Path, size: &str, fps: u32, seconds: u32, codec_args: &[&str]) {
    let source = format!("testsrc2=size={size}:rate={fps}");
    let duration = seconds.to_string();
    let mut args = vec!["-f", "lavfi", "-i", &source, "-t", &duration];
    args.extend_from_slice(codec_args);
    args.push(path.to_str().unwrap());
    ffmpeg(&args);
}

/// libx264, high profile, with B-frames: what most real-world MP4s hold.
pub const X264_HIGH: &[&str] = &[
    "-c:v",
    "libx264",
    "-profile:v",
    "high",
    "-bf",
    "3",
    "-pix_fmt",
    "yuv420p",
];

/// Decodes any video with ffmpeg into packed RGB frames.
pub fn ffmpeg_rgb(path: &Path) -> Vec<u8> {
    ffmpeg(&[
        "-i",
        path.to_str().unwrap(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ])
}

/// `ffprobe` stream fields of the first video stream, as `key=value` lines.
pub fn ffprobe(path: &Path, fields: &str) -> String {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
        ])
        .arg(format!("stream={fields}"))
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "ffprobe {path:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `key: value` in `himmel info` output.
pub fn info_value(info: &str, key: &str) -> String {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {info}"))
        .to_string()
}

/// Names of the entries in `dir`.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
