//! `himmel verify FILE`: finds Himmel's marks in a video: the C2PA manifest (valid, signer,
//! claims, ingredients) and the invisible watermark (payload, confidence). The exit status
//! tells marked (0) from unmarked (3) and from a manifest that fails validation (4).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use himmel_core::Progress;
use himmel_media::{ReadOptions, read_video};
use himmel_safety::provenance::{self, ProvenanceError, Report, Validity};
use himmel_safety::watermark::{self, Detection};

/// Exit status when no Himmel mark is found.
const UNMARKED: u8 = 3;
/// Exit status when a manifest is present but fails validation (changed or forged).
const TAMPERED: u8 = 4;

/// Arguments of `himmel verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The video to check (MP4 carries a manifest; any readable video is searched for the
    /// watermark).
    input: PathBuf,
    /// Certificate authorities (PEM) whose signers count as trusted, e.g. the local-ca.pem of
    /// the machine that made the video.
    #[arg(long, value_name = "PEM")]
    trust: Option<PathBuf>,
}

/// What the manifest check found.
enum Manifest {
    Found(Report),
    None,
    Unreadable(String),
}

/// Checks the file and prints what it found; returns the exit status.
pub fn run(args: &VerifyArgs, progress: &dyn Progress) -> Result<ExitCode> {
    if !args.input.exists() {
        bail!("{}: no such file", args.input.display());
    }
    let anchors = args
        .trust
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the trust anchors {}", path.display()))
        })
        .transpose()?;
    let manifest = if args.input.is_file() {
        match provenance::read(&args.input, anchors.as_deref()) {
            Ok(report) => Manifest::Found(report),
            Err(ProvenanceError::NoManifest(_)) => Manifest::None,
            Err(error) => Manifest::Unreadable(error.to_string()),
        }
    } else {
        Manifest::None
    };
    let video = read_video(&args.input, &ReadOptions::default(), progress);
    let watermark = match &video {
        Ok(video) => Some(watermark::detect(video)?),
        Err(_) => None,
    };
    if let Err(error) = &video {
        match &manifest {
            Manifest::None => bail!("not a readable video: {error}"),
            Manifest::Unreadable(reason) => bail!("not a readable video: {error}; {reason}"),
            Manifest::Found(_) => {}
        }
    }
    println!("file: {}", args.input.display());
    print_manifest(&manifest);
    match (&video, &watermark) {
        (Ok(_), Some(detection)) => print_watermark(detection),
        (Err(error), _) => println!("watermark: cannot be searched: {error}"),
        _ => {}
    }
    let intact = matches!(&manifest, Manifest::Found(r) if r.validity != Validity::Invalid);
    let tampered = matches!(&manifest, Manifest::Unreadable(_))
        || matches!(&manifest, Manifest::Found(r) if r.validity == Validity::Invalid);
    let watermarked = watermark.as_ref().is_some_and(|d| d.present);
    if let (Manifest::Found(report), Some(detection)) = (&manifest, &watermark)
        && let (Some(payload), Some(recorded)) = (
            detection.payload,
            report
                .generation
                .as_ref()
                .and_then(|g| g["generation"].as_u64()),
        )
        && u64::from(payload.generation) != recorded
    {
        println!(
            "note: the watermark id {:08x} differs from the manifest's {recorded:08x}",
            payload.generation
        );
    }
    let (verdict, status) = if tampered {
        (
            "the C2PA manifest fails validation: the file was changed after signing, or the manifest is forged",
            TAMPERED,
        )
    } else if intact && watermarked {
        ("made by Himmel: signed manifest and watermark", 0)
    } else if intact {
        ("made by Himmel: signed manifest (no watermark found)", 0)
    } else if watermarked {
        ("made by Himmel: watermark (no manifest)", 0)
    } else {
        ("no Himmel marks found", UNMARKED)
    };
    println!("verdict: {verdict}");
    Ok(ExitCode::from(status))
}

fn print_manifest(manifest: &Manifest) {
    let report = match manifest {
        Manifest::None => return println!("c2pa: no manifest"),
        Manifest::Unreadable(reason) => return println!("c2pa: INVALID: {reason}"),
        Manifest::Found(report) => report,
    };
    let untrusted = report
        .problems
        .iter()
        .any(|p| p.starts_with("signingCredential.untrusted"));
    let state = match report.validity {
        Validity::Trusted => "valid, signer trusted",
        Validity::Valid if untrusted => "valid, signer not trusted",
        Validity::Valid => "valid",
        Validity::Invalid => "INVALID",
    };
    println!("c2pa: {state}");
    println!("  signer: {}", report.signer);
    println!("  software: {}", report.software);
    for action in &report.actions {
        println!("  action: {action}");
    }
    for ingredient in &report.ingredients {
        println!("  ingredient: {ingredient}");
    }
    if let Some(generation) = &report.generation {
        let id = generation["generation"].as_u64().unwrap_or_default();
        let model = generation["model"].as_str().unwrap_or("unknown");
        println!("  generation: model {model}, id {id:08x}");
    }
    for problem in &report.problems {
        println!("  status: {problem}");
    }
}

fn print_watermark(detection: &Detection) {
    let details = format!(
        "confidence {:.6}, sync {:.1} sigma, marker {}/16, zoom {:.3}",
        detection.confidence, detection.sync_score, detection.marker_agreement, detection.zoom
    );
    match detection.payload {
        Some(payload) => println!(
            "watermark: present, id {:08x} ({details}, bits {:.0}% reliable)",
            payload.generation,
            100.0 * detection.bit_reliability
        ),
        None => println!("watermark: not found ({details})"),
    }
}
