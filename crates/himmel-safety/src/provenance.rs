//! C2PA Content Credentials: a signed manifest in every MP4 Himmel writes, stating that
//! generative AI made it (`c2pa.created` with the IPTC digital source type
//! `trainedAlgorithmicMedia`), with which software and model, and, when a clip or image went
//! in, that it was edited from that ingredient. [`read`] reports a file's manifest and
//! whether it validates (a changed byte of the video makes it invalid).
//!
//! Signing uses a certificate chain and private key the user configures ([`Credentials::from_files`]);
//! without one, Himmel makes a local pair once ([`Credentials::local`]): a self-signed
//! certificate authority of this machine and a signing certificate it issued. Readers then
//! report the manifest as intact but its signer as untrusted (`signingCredential.untrusted`),
//! which is the truth: nobody vouches for a local key.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use c2pa::{Builder, Context, Reader, SigningAlg, ValidationState, create_signer};
use serde_json::{Value, json};

/// The IPTC digital source type of media made by a trained model.
pub const TRAINED_ALGORITHMIC_MEDIA: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// The IPTC digital source type of media that combines given media with a model's output.
pub const COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia";

/// The label of Himmel's own assertion (model and watermark id).
pub const GENERATION_ASSERTION: &str = "org.himmel.generation";

/// Files of the local signing pair, in [`Credentials::local`]'s folder.
const LOCAL_CA: &str = "local-ca.pem";
const LOCAL_CHAIN: &str = "signer-chain.pem";
const LOCAL_KEY: &str = "signer-key.pem";

/// Settings for the C2PA library: no network (no time stamps, no certificate status
/// lookups), checks on.
const SETTINGS: &str =
    r#"{"core": {"allowed_network_hosts": []}, "verify": {"verify_after_sign": true}}"#;

/// Why a manifest could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The signing certificate or key cannot be used.
    #[error("C2PA signing credentials: {0}")]
    Credentials(String),
    /// The C2PA library refused to sign.
    #[error("signing the C2PA manifest of {path}: {reason}")]
    Sign {
        /// The file.
        path: PathBuf,
        /// What the library said.
        reason: String,
    },
    /// The file carries no C2PA manifest.
    #[error("{0}: no C2PA manifest")]
    NoManifest(PathBuf),
    /// The file's manifest cannot be parsed at all.
    #[error("{path}: unreadable C2PA manifest: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the library said.
        reason: String,
    },
}

impl ProvenanceError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A certificate chain (PEM, signing certificate first) and its private key (PKCS#8 PEM,
/// ECDSA P-256).
#[derive(Clone)]
pub struct Credentials {
    chain: Vec<u8>,
    key: Vec<u8>,
}

impl Credentials {
    /// The user's certificate chain and key.
    pub fn from_files(chain: &Path, key: &Path) -> Result<Self, ProvenanceError> {
        let read = |path: &Path| fs::read(path).map_err(|e| ProvenanceError::io(path, e));
        let credentials = Self {
            chain: read(chain)?,
            key: read(key)?,
        };
        credentials.check()?;
        Ok(credentials)
    }

    /// The local pair in `folder`, made there on first use (the second value says whether it
    /// was made now). Processes starting at once agree on one pair: it is written to a
    /// temporary folder that is renamed into place.
    pub fn local(folder: &Path) -> Result<(Self, bool), ProvenanceError> {
        let (chain, key) = (folder.join(LOCAL_CHAIN), folder.join(LOCAL_KEY));
        if chain.is_file() && key.is_file() {
            return Ok((Self::from_files(&chain, &key)?, false));
        }
        let parent = folder_of(folder);
        fs::create_dir_all(parent).map_err(|e| ProvenanceError::io(parent, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".himmel-c2pa-")
            .tempdir_in(parent)
            .map_err(|e| ProvenanceError::io(parent, e))?;
        let pair = LocalPair::generate()?;
        write_private(
            &staging.path().join(LOCAL_CA),
            pair.authority.as_bytes(),
            0o644,
        )?;
        write_private(
            &staging.path().join(LOCAL_CHAIN),
            pair.chain.as_bytes(),
            0o644,
        )?;
        write_private(&staging.path().join(LOCAL_KEY), pair.key.as_bytes(), 0o600)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755));
        }
        // Fails when another process put its pair there first: then that one is used.
        let made = fs::rename(staging.path(), folder).is_ok();
        Ok((Self::from_files(&chain, &key)?, made))
    }

    fn signer(&self) -> Result<c2pa::BoxedSigner, ProvenanceError> {
        create_signer::from_keys(&self.chain, &self.key, SigningAlg::Es256, None)
            .map_err(|e| ProvenanceError::Credentials(e.to_string()))
    }

    fn check(&self) -> Result<(), ProvenanceError> {
        self.signer().map(|_| ())
    }
}

/// The folder of the local signing pair: `$HIMMEL_HOME/c2pa`, else the user's data folder
/// (`$XDG_DATA_HOME/himmel/c2pa` or `~/.local/share/himmel/c2pa`).
pub fn local_folder() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var("HIMMEL_HOME") {
        return home.join("c2pa");
    }
    let data = var("XDG_DATA_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("himmel/c2pa")
}

/// The folder `path` is in (`.` for a bare file name).
pub(crate) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Writes a new file with permissions `mode` (on Unix).
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProvenanceError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| ProvenanceError::io(path, e))?;
    file.write_all(bytes)
        .map_err(|e| ProvenanceError::io(path, e))
}

/// A local certificate authority and a signing certificate it issued, PEM.
struct LocalPair {
    authority: String,
    chain: String,
    key: String,
}

impl LocalPair {
    fn generate() -> Result<Self, ProvenanceError> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
        };
        let failed = |e: rcgen::Error| ProvenanceError::Credentials(e.to_string());
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "this machine".into());
        let name = |common: &str| {
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, common);
            // c2pa reports the organisation as the signer ("issuer").
            name.push(DnType::OrganizationName, "Himmel (local, self-signed)");
            name
        };
        let mut authority = CertificateParams::default();
        authority.distinguished_name = name(&format!("Himmel local CA on {host}"));
        authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        authority.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let authority_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let authority = CertifiedIssuer::self_signed(authority, authority_key).map_err(failed)?;

        let mut signer = CertificateParams::default();
        signer.distinguished_name = name(&format!("Himmel on {host}"));
        signer.is_ca = IsCa::ExplicitNoCa;
        signer.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // C2PA accepts signing certificates for e-mail protection or document signing.
        signer.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
        signer.use_authority_key_identifier_extension = true;
        let signer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let signer_cert = signer.signed_by(&signer_key, &authority).map_err(failed)?;
        Ok(Self {
            authority: authority.pem(),
            chain: format!("{}{}", signer_cert.pem(), authority.pem()),
            key: signer_key.serialize_pem(),
        })
    }
}

/// How a source went into the video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The video continues or re-styles it (video to video, extension): its parent.
    Parent,
    /// Part of it shows in the video (an image as first frame, the ends of a connection).
    Component,
}

/// A file that went into the video.
#[derive(Debug, Clone)]
pub struct Ingredient {
    /// The file.
    pub path: PathBuf,
    /// How it went in.
    pub role: Role,
}

/// What the manifest states about one video.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The model that made it, e.g. `himmel-mini`.
    pub model: String,
    /// What was done, in words (e.g. `text to video`, `extended forward by 3 s`).
    pub task: String,
    /// The id of the generation, also carried by the watermark.
    pub generation: u32,
    /// The files that went in.
    pub ingredients: Vec<Ingredient>,
}

impl Claim {
    /// The manifest definition and the ingredients' labels.
    fn definition(&self, title: &str) -> Value {
        let labels: Vec<String> = (0..self.ingredients.len())
            .map(|i| format!("ingredient-{i}"))
            .collect();
        let generation = json!({
            "model": self.model,
            "task": self.task,
            "generation": self.generation,
            "watermark": format!("himmel-48 {:08x}", self.generation),
        });
        let software = json!({"name": "Himmel", "version": env!("CARGO_PKG_VERSION")});
        let parent = self
            .ingredients
            .iter()
            .zip(&labels)
            .find(|(i, _)| i.role == Role::Parent)
            .map(|(_, label)| label.clone());
        let actions = match parent {
            None => vec![json!({
                "action": "c2pa.created",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": software,
                "description": format!("{} with {}", self.task, self.model),
                "parameters": {"ingredientIds": labels},
            })],
            Some(parent) => vec![
                json!({"action": "c2pa.opened", "parameters": {"ingredientIds": [parent]}}),
                json!({
                    "action": "c2pa.edited",
                    "digitalSourceType": COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA,
                    "softwareAgent": software,
                    "description": format!("{} with {}", self.task, self.model),
                    "parameters": {"ingredientIds": labels},
                }),
            ],
        };
        json!({
            "claim_generator_info": [software],
            "title": title,
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": actions}},
                {"label": GENERATION_ASSERTION, "data": generation},
            ],
        })
    }
}

/// Writes the MP4 `source` to `path` (which may be `source` itself) with a signed manifest
/// stating `claim`; nothing changes at `path` if signing fails.
pub fn sign(
    source: &Path,
    path: &Path,
    claim: &Claim,
    credentials: &Credentials,
) -> Result<(), ProvenanceError> {
    let failed = |reason: String| ProvenanceError::Sign {
        path: path.into(),
        reason,
    };
    let title = path
        .file_name()
        .map_or_else(|| "video.mp4".into(), |n| n.to_string_lossy().into_owned());
    let context = Context::new()
        .with_settings(SETTINGS)
        .map_err(|e| failed(e.to_string()))?;
    let mut builder = Builder::from_context(context)
        .with_definition(claim.definition(&title).to_string())
        .map_err(|e| failed(e.to_string()))?;
    for (index, ingredient) in claim.ingredients.iter().enumerate() {
        add_ingredient(&mut builder, ingredient, &format!("ingredient-{index}"))
            .map_err(|e| failed(format!("ingredient {}: {e}", ingredient.path.display())))?;
    }
    let signer = credentials.signer()?;
    let folder = folder_of(path);
    let signed = tempfile::Builder::new()
        .prefix(".himmel-")
        .suffix(".c2pa.partial")
        .tempfile_in(folder)
        .map_err(|e| ProvenanceError::io(folder, e))?;
    {
        let mut source = File::open(source).map_err(|e| ProvenanceError::io(source, e))?;
        let mut destination = signed.reopen().map_err(|e| ProvenanceError::io(path, e))?;
        builder
            .sign(signer.as_ref(), "video/mp4", &mut source, &mut destination)
            .map_err(|e| failed(e.to_string()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(signed.path(), fs::Permissions::from_mode(0o644));
    }
    signed
        .persist(path)
        .map_err(|e| ProvenanceError::io(path, e.error))?;
    Ok(())
}

/// The media type C2PA knows a file by, from its extension.
fn media_type(path: &Path) -> Option<&'static str> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match extension.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => return None,
    })
}

/// Adds `ingredient` under `label`: hashed (and its own manifest kept) when C2PA knows its
/// format, else by name only.
fn add_ingredient(
    builder: &mut Builder,
    ingredient: &Ingredient,
    label: &str,
) -> Result<(), String> {
    let relationship = match ingredient.role {
        Role::Parent => "parentOf",
        Role::Component => "componentOf",
    };
    let title = ingredient.path.file_name().map_or_else(
        || ingredient.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut definition = json!({"title": title, "relationship": relationship, "label": label});
    match media_type(&ingredient.path) {
        Some(format) if ingredient.path.is_file() => {
            definition["format"] = json!(format);
            let mut stream = File::open(&ingredient.path).map_err(|e| e.to_string())?;
            builder
                .add_ingredient_from_stream(definition.to_string(), format, &mut stream)
                .map_err(|e| e.to_string())?;
        }
        _ => {
            let ingredient: c2pa::Ingredient =
                serde_json::from_value(definition).map_err(|e| e.to_string())?;
            builder.add_ingredient(ingredient);
        }
    }
    Ok(())
}

/// Whether a manifest validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Intact, and its signer is on a trust list given to the reader.
    Trusted,
    /// Intact (hashes and signature check out); the signer is not known to be trusted.
    Valid,
    /// Something was changed after signing, or the manifest is malformed.
    Invalid,
}

/// A file's C2PA manifest, as [`read`] finds it.
#[derive(Debug, Clone)]
pub struct Report {
    /// Whether it validates.
    pub validity: Validity,
    /// The signing certificate's organisation and common name.
    pub signer: String,
    /// The software that wrote the manifest.
    pub software: String,
    /// The actions claimed, e.g. `c2pa.created (trainedAlgorithmicMedia): text to video with himmel-mini`.
    pub actions: Vec<String>,
    /// The ingredients: title and relationship (`parentOf`, `componentOf`, `inputTo`).
    pub ingredients: Vec<String>,
    /// Himmel's own assertion (model, task, generation id), when present.
    pub generation: Option<Value>,
    /// The validation findings that are not successes: code and explanation.
    pub problems: Vec<String>,
}

/// Reads and validates the C2PA manifest of `path` (MP4); `trust_anchors` (PEM) marks
/// signers issued by those authorities as trusted.
pub fn read(path: &Path, trust_anchors: Option<&str>) -> Result<Report, ProvenanceError> {
    let mut settings: Value = serde_json::from_str(SETTINGS).expect("the settings are JSON");
    if let Some(anchors) = trust_anchors {
        settings["trust"] = json!({"user_anchors": anchors});
    }
    let unreadable = |reason: String| ProvenanceError::Unreadable {
        path: path.into(),
        reason,
    };
    let context = Context::new()
        .with_settings(settings.to_string())
        .map_err(|e| unreadable(e.to_string()))?;
    let format = media_type(path).unwrap_or("video/mp4");
    let mut stream = File::open(path).map_err(|e| ProvenanceError::io(path, e))?;
    let reader = match Reader::from_context(context).with_stream(format, &mut stream) {
        Ok(reader) => reader,
        Err(c2pa::Error::JumbfNotFound) => return Err(ProvenanceError::NoManifest(path.into())),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let validity = match reader.validation_state() {
        ValidationState::Trusted => Validity::Trusted,
        ValidationState::Valid => Validity::Valid,
        _ => Validity::Invalid,
    };
    let problems = reader
        .validation_status()
        .unwrap_or_default()
        .iter()
        .map(|status| match status.explanation() {
            Some(explanation) => format!("{} ({explanation})", status.code()),
            None => status.code().to_string(),
        })
        .collect();
    let Some(manifest) = reader.active_manifest() else {
        return Err(unreadable("no active manifest".into()));
    };
    let signer = manifest.signature_info().map_or_else(
        || "unknown".into(),
        |info| {
            let organisation = info.issuer.clone().unwrap_or_default();
            match &info.common_name {
                Some(common) if !organisation.is_empty() => format!("{organisation} / {common}"),
                Some(common) => common.clone(),
                None => organisation,
            }
        },
    );
    let software = manifest
        .claim_generator_info
        .as_ref()
        .and_then(|infos| infos.first())
        .map_or_else(String::new, |info| match &info.version {
            Some(version) => format!("{} {version}", info.name),
            None => info.name.clone(),
        });
    let actions = manifest
        .find_assertion::<Value>("c2pa.actions.v2")
        .or_else(|_| manifest.find_assertion::<Value>("c2pa.actions"))
        .ok()
        .and_then(|assertion| assertion["actions"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(describe_action)
        .collect();
    let ingredients = manifest
        .ingredients()
        .iter()
        .map(|ingredient| {
            let relationship = serde_json::to_value(ingredient.relationship())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into());
            format!(
                "{} ({relationship})",
                ingredient.title().unwrap_or("untitled"),
            )
        })
        .collect();
    Ok(Report {
        validity,
        signer,
        software,
        actions,
        ingredients,
        generation: manifest.find_assertion::<Value>(GENERATION_ASSERTION).ok(),
        problems,
    })
}

/// `action (source type): description`.
fn describe_action(action: &Value) -> String {
    let name = action["action"].as_str().unwrap_or("unknown action");
    let mut text = name.to_string();
    if let Some(source) = action["digitalSourceType"].as_str() {
        let short = source.rsplit('/').next().unwrap_or(source);
        text.push_str(&format!(" ({short})"));
    }
    if let Some(description) = action["description"].as_str() {
        text.push_str(&format!(": {description}"));
    }
    text
}
