//! `himmel convert` against a real decoder and encoder (ffmpeg): every format out and back.

mod common;

use common::*;
use himmel_core::compare::psnr;

const FRAMES: usize = 48;
const SIDE: usize = 256;

fn source(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("source.mp4");
    make_clip(&path, "256x256", 24, 2, X264_HIGH);
    assert!(ffprobe(&path, "profile,has_b_frames").contains("profile=High"));
    path
}

#[test]
fn mp4_out_matches_the_source_in_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let out = dir.path().join("out.mp4");
    himmel_ok(&["convert", source.to_str().unwrap(), out.to_str().unwrap()]);

    let probe = ffprobe(&out, "codec_name,width,height,r_frame_rate,nb_read_frames");
    for expected in [
        "codec_name=h264",
        "width=256",
        "height=256",
        "r_frame_rate=24/1",
        "nb_read_frames=48",
    ] {
        assert!(
            probe.contains(expected),
            "{expected} missing from ffprobe: {probe}"
        );
    }
    let quality = psnr(&ffmpeg_rgb(&source), &ffmpeg_rgb(&out));
    assert!(quality >= 35.0, "PSNR {quality:.2} dB is below 35 dB");
}

#[test]
fn our_decoder_agrees_with_ffmpeg_on_high_profile_b_frames() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let raw = dir.path().join("frames.safetensors");
    himmel_ok(&["convert", source.to_str().unwrap(), raw.to_str().unwrap()]);
    let info = himmel_ok(&["info", raw.to_str().unwrap()]);
    assert_eq!(info_value(&info, "frames"), FRAMES.to_string());
    assert_eq!(info_value(&info, "fps"), "24");

    // Back to PNG frames losslessly, then compare with ffmpeg's own decode of the source.
    let pngs = dir.path().join("frames.png");
    himmel_ok(&["convert", raw.to_str().unwrap(), pngs.to_str().unwrap()]);
    assert_eq!(entries(&pngs).len(), FRAMES);
    let pattern = pngs.join("%06d.png");
    let ours = ffmpeg(&[
        "-i",
        pattern.to_str().unwrap(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]);
    let agreement = psnr(&ffmpeg_rgb(&source), &ours);
    assert!(
        agreement >= 40.0,
        "decoders disagree: PSNR {agreement:.2} dB"
    );
}

#[test]
fn gif_and_mov_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let gif = dir.path().join("out.gif");
    himmel_ok(&["convert", source.to_str().unwrap(), gif.to_str().unwrap()]);
    let info = himmel_ok(&["info", gif.to_str().unwrap()]);
    assert_eq!(info_value(&info, "frames"), FRAMES.to_string());
    assert_eq!(info_value(&info, "fps"), "24");
    let decoded = ffmpeg_rgb(&gif);
    assert_eq!(
        decoded.len(),
        FRAMES * SIDE * SIDE * 3,
        "ffmpeg sees another frame count in our GIF"
    );
    let quality = psnr(&ffmpeg_rgb(&source), &decoded);
    assert!(quality >= 25.0, "GIF PSNR {quality:.2} dB");

    let mov = dir.path().join("source.mov");
    make_clip(&mov, "320x240", 30, 1, &["-c:v", "libx264"]);
    let info = himmel_ok(&["info", mov.to_str().unwrap()]);
    assert_eq!(
        (
            info_value(&info, "frames"),
            info_value(&info, "width"),
            info_value(&info, "fps")
        ),
        ("30".into(), "320".into(), "30".into())
    );
}

#[test]
fn trims_retimes_and_resizes() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let out = dir.path().join("edited.mp4");
    let args = ["--frames", "8..32", "--fps", "12", "--width", "128"];
    himmel_ok(
        &[
            &["convert", source.to_str().unwrap(), out.to_str().unwrap()],
            &args[..],
        ]
        .concat(),
    );
    let probe = ffprobe(&out, "width,height,r_frame_rate,nb_read_frames");
    for expected in [
        "width=128",
        "height=128",
        "r_frame_rate=12/1",
        "nb_read_frames=12",
    ] {
        assert!(
            probe.contains(expected),
            "{expected} missing from ffprobe: {probe}"
        );
    }
}

#[test]
fn stills_and_png_folders_take_the_input_frame_rate() {
    let dir = tempfile::tempdir().unwrap();
    for (name, codec) in [
        ("still.png", "png"),
        ("still.jpg", "mjpeg"),
        ("still.webp", "libwebp"),
    ] {
        let path = dir.path().join(name);
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48",
            "-frames:v",
            "1",
            "-c:v",
            codec,
            path.to_str().unwrap(),
        ]);
        let info = himmel_ok(&["info", path.to_str().unwrap()]);
        assert_eq!(
            (info_value(&info, "frames"), info_value(&info, "width")),
            ("1".into(), "64".into()),
            "{name}"
        );
    }
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let pattern = frames.join("%03d.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10",
        "-frames:v",
        "5",
        pattern.to_str().unwrap(),
    ]);
    let out = dir.path().join("clip.mp4");
    himmel_ok(&[
        "convert",
        frames.to_str().unwrap(),
        out.to_str().unwrap(),
        "--input-fps",
        "10",
    ]);
    assert!(
        ffprobe(&out, "r_frame_rate,nb_read_frames")
            .contains("r_frame_rate=10/1\nnb_read_frames=5")
    );
}

#[test]
fn quality_options_trade_size_for_fidelity() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let reference = ffmpeg_rgb(&source);
    let mut measured = Vec::new();
    for (name, option, value) in [
        ("fine.mp4", "--crf", "12"),
        ("coarse.mp4", "--crf", "36"),
        ("low.mp4", "--bitrate", "100"),
    ] {
        let out = dir.path().join(name);
        himmel_ok(&[
            "convert",
            source.to_str().unwrap(),
            out.to_str().unwrap(),
            option,
            value,
        ]);
        measured.push((
            std::fs::metadata(&out).unwrap().len(),
            psnr(&reference, &ffmpeg_rgb(&out)),
        ));
    }
    let [
        (fine_size, fine_psnr),
        (coarse_size, coarse_psnr),
        (low_size, _),
    ] = measured[..]
    else {
        unreachable!()
    };
    assert!(
        fine_size > 2 * coarse_size,
        "--crf 12 gave {fine_size} bytes, --crf 36 {coarse_size}"
    );
    assert!(
        fine_psnr > coarse_psnr + 3.0,
        "--crf 12 {fine_psnr:.1} dB vs --crf 36 {coarse_psnr:.1} dB"
    );
    let target = 100_000 / 8 * 2; // 100 kbit/s for 2 seconds
    assert!(
        low_size < target * 2,
        "--bitrate 100 gave {low_size} bytes for a {target}-byte budget"
    );
}
