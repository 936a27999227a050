//! The options that choose how outputs are marked (C2PA signing credentials, or none), shared
//! by `himmel generate` and `himmel serve`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use himmel_safety::provenance::{Claim, Credentials};

/// How outputs are signed.
#[derive(Args, Clone)]
pub struct MarkArgs {
    /// Write no C2PA manifest into MP4 outputs (the invisible watermark stays).
    #[arg(long)]
    no_c2pa: bool,
    /// C2PA signing certificate chain (PEM, signing certificate first); without it, a local
    /// self-signed pair is made once (generate: in $HIMMEL_HOME/c2pa or
    /// ~/.local/share/himmel/c2pa; serve: in the data directory's c2pa folder).
    #[arg(
        long,
        env = "HIMMEL_C2PA_CERT",
        value_name = "PEM",
        requires = "c2pa_key"
    )]
    c2pa_cert: Option<PathBuf>,
    /// The private key of --c2pa-cert (PKCS#8 PEM, ECDSA P-256).
    #[arg(
        long,
        env = "HIMMEL_C2PA_KEY",
        value_name = "PEM",
        requires = "c2pa_cert"
    )]
    c2pa_key: Option<PathBuf>,
}

impl MarkArgs {
    /// The signing credentials, or `None` with --no-c2pa; without --c2pa-cert, the local pair
    /// in `local`, made there on first use. The note says so when it was made now (to be
    /// printed once the work succeeded).
    pub fn credentials(&self, local: &Path) -> Result<(Option<Credentials>, Option<String>)> {
        if self.no_c2pa {
            if self.c2pa_cert.is_some() {
                bail!("--no-c2pa and --c2pa-cert contradict each other");
            }
            return Ok((None, None));
        }
        if let (Some(cert), Some(key)) = (&self.c2pa_cert, &self.c2pa_key) {
            return Ok((Some(Credentials::from_files(cert, key)?), None));
        }
        let (credentials, made) = Credentials::local(local)
            .with_context(|| format!("making a local C2PA signing pair in {}", local.display()))?;
        let note = made.then(|| {
            format!(
                "note: made a local, self-signed C2PA signing pair in {}; readers will report the \
                 signer as untrusted (use --c2pa-cert/--c2pa-key for a certificate others trust)",
                local.display()
            )
        });
        Ok((Some(credentials), note))
    }
}

/// A fresh id for one generation (carried by the watermark, recorded in the manifest).
pub fn new_generation_id() -> u32 {
    rand::random()
}

/// The marks of an output: the watermark id and, when signing, the claim.
pub fn marks(credentials: Option<Credentials>, claim: Claim) -> himmel_safety::Marks {
    himmel_safety::Marks {
        generation: claim.generation,
        provenance: credentials.map(|credentials| (claim, credentials)),
    }
}
