//! Every bad input gets one clear error (exit code 1, no panic) and leaves no output behind.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Converts `input` to `dir/out.<ext>` expecting failure; checks the message names
/// `expected` and that `dir` gained no files.
fn rejects(dir: &Path, input: &Path, output: &str, extra: &[&str], expected: &str) {
    let before = entries(dir);
    let out = dir.join(output);
    let args = [
        &["convert", input.to_str().unwrap(), out.to_str().unwrap()],
        extra,
    ]
    .concat();
    let message = himmel_err(&args);
    assert!(
        message.contains(expected),
        "expected {expected:?} in: {message}"
    );
    assert_eq!(entries(dir), before, "a failed convert left files behind");
}

#[test]
fn broken_and_missing_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let good = dir.join("good.mp4");
    make_clip(&good, "128x128", 24, 1, X264_HIGH);

    rejects(dir, &dir.join("missing.mp4"), "a.mp4", &[], "no such file");

    let empty = dir.join("empty.mp4");
    fs::write(&empty, b"").unwrap();
    rejects(dir, &empty, "a.mp4", &[], "empty");

    let bytes = fs::read(&good).unwrap();
    let truncated = dir.join("truncated.mp4");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    rejects(dir, &truncated, "a.mp4", &[], "truncated");

    let faststart = dir.join("faststart.mp4");
    ffmpeg(&[
        "-i",
        good.to_str().unwrap(),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        faststart.to_str().unwrap(),
    ]);
    let bytes = fs::read(&faststart).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    rejects(dir, &truncated, "a.gif", &[], "truncated");

    let text = dir.join("notes.mp4");
    fs::write(&text, "these are my notes, not a video\n").unwrap();
    rejects(dir, &text, "a.mp4", &[], "not a valid MP4 file");

    let unknown = dir.join("clip.avi");
    fs::write(&unknown, b"RIFF").unwrap();
    rejects(dir, &unknown, "a.mp4", &[], "unknown input format");
}

#[test]
fn codecs_we_cannot_decode_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let hevc: &[&str] = &["-c:v", "libx265", "-x265-params", "log-level=error"];
    let vp9: &[&str] = &["-c:v", "libvpx-vp9"];
    for (name, codec, expected) in [("hevc.mp4", hevc, "HEVC"), ("vp9.mp4", vp9, "VP9")] {
        let path = dir.join(name);
        make_clip(&path, "64x64", 10, 1, codec);
        rejects(dir, &path, "a.mp4", &[], expected);
    }
}

#[test]
fn bad_sizes_ranges_and_output_paths() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let good = dir.join("good.mp4");
    make_clip(&good, "128x128", 24, 1, X264_HIGH);

    rejects(
        dir,
        &good,
        "a.mp4",
        &["--width", "101", "--height", "64"],
        "even width and height",
    );
    rejects(
        dir,
        &good,
        "a.mp4",
        &["--frames", "10..500"],
        "the clip has 24 frames",
    );
    rejects(dir, &good, "a.mp4", &["--frames", "30.."], "out of range");
    rejects(
        dir,
        &good,
        "a.mp4",
        &["--fps", "0"],
        "frame rate must be a positive number",
    );
    rejects(dir, &good, "no/such/folder/a.mp4", &[], "does not exist");
    rejects(dir, &good, "a.avi", &[], "unknown output format");

    let usage = himmel(&["convert", good.to_str().unwrap(), "a.mp4", "--width", "0"]);
    assert_eq!(usage.status.code(), Some(2), "a zero size is a usage error");
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--width"));
}

#[test]
fn an_existing_output_survives_a_failed_convert() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let good = dir.join("good.mp4");
    make_clip(&good, "128x128", 24, 1, X264_HIGH);
    let keep = dir.join("keep.mp4");
    fs::write(&keep, b"precious").unwrap();
    himmel_err(&[
        "convert",
        good.to_str().unwrap(),
        keep.to_str().unwrap(),
        "--width",
        "99",
        "--height",
        "64",
    ]);
    assert_eq!(fs::read(&keep).unwrap(), b"precious");
}
