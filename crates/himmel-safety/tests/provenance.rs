//! C2PA manifests on real MP4 files: signed with a local pair, read back valid (untrusted
//! signer, or trusted given the local authority), ingredients recorded, and every kind of
//! damage reported: no manifest, changed video bytes, a forged claim.

use std::path::{Path, PathBuf};

use himmel_core::Silent;
use himmel_media::{WriteOptions, write_video};
use himmel_safety::provenance::{
    self, Claim, Credentials, Ingredient, ProvenanceError, Role, Validity,
};
use himmel_world::RenderSettings;

/// A short world clip written as MP4 at `path`.
fn write_clip(path: &Path, index: u64) {
    let settings = RenderSettings {
        width: 64,
        height: 64,
        frames: 9,
        fps: 16.0,
    };
    let clip = himmel_world::sample::sample_clip(3, index, &settings)
        .unwrap()
        .0;
    write_video(&clip.video, path, &WriteOptions::default(), &Silent).unwrap();
}

fn claim(ingredients: Vec<Ingredient>) -> Claim {
    Claim {
        model: "himmel-mini".into(),
        task: "text to video".into(),
        generation: 0xC0FF_EE01,
        ingredients,
    }
}

struct Signed {
    dir: tempfile::TempDir,
    video: PathBuf,
    credentials: Credentials,
}

fn signed(ingredients: impl FnOnce(&Path) -> Vec<Ingredient>) -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("out.mp4");
    write_clip(&video, 0);
    let (credentials, made) = Credentials::local(&dir.path().join("keys")).unwrap();
    assert!(made);
    let ingredients = ingredients(dir.path());
    provenance::sign(&video, &video, &claim(ingredients), &credentials).unwrap();
    Signed {
        dir,
        video,
        credentials,
    }
}

#[test]
fn a_signed_video_is_valid_and_says_what_made_it() {
    let signed = signed(|_| Vec::new());
    let report = provenance::read(&signed.video, None).unwrap();
    assert_eq!(report.validity, Validity::Valid, "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("signingCredential.untrusted")),
        "{report:?}"
    );
    assert!(
        report.signer.contains("Himmel (local, self-signed)"),
        "{report:?}"
    );
    assert!(report.software.starts_with("Himmel "), "{report:?}");
    assert!(
        report.actions[0]
            .starts_with("c2pa.created (trainedAlgorithmicMedia): text to video with himmel-mini"),
        "{report:?}"
    );
    let generation = report.generation.unwrap();
    assert_eq!(generation["generation"], 0xC0FF_EE01u32);
    assert_eq!(generation["model"], "himmel-mini");
    assert!(report.ingredients.is_empty());
}

#[test]
fn the_local_authority_makes_it_trusted_and_the_pair_is_reused() {
    let signed = signed(|_| Vec::new());
    let authority = std::fs::read_to_string(signed.dir.path().join("keys/local-ca.pem")).unwrap();
    let report = provenance::read(&signed.video, Some(&authority)).unwrap();
    assert_eq!(report.validity, Validity::Trusted, "{report:?}");
    let (_, made) = Credentials::local(&signed.dir.path().join("keys")).unwrap();
    assert!(!made, "the local pair is made once");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = signed.dir.path().join("keys/signer-key.pem");
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the private key is private: {mode:o}");
    }
    let _ = &signed.credentials;
}

#[test]
fn edits_record_their_ingredients() {
    let signed = signed(|dir| {
        let source = dir.join("source.mp4");
        write_clip(&source, 1);
        vec![Ingredient {
            path: source,
            role: Role::Parent,
        }]
    });
    let report = provenance::read(&signed.video, None).unwrap();
    assert_eq!(report.validity, Validity::Valid, "{report:?}");
    assert_eq!(report.ingredients, ["source.mp4 (parentOf)"], "{report:?}");
    assert!(report.actions[0].starts_with("c2pa.opened"), "{report:?}");
    assert!(
        report.actions[1].starts_with("c2pa.edited (compositeWithTrainedAlgorithmicMedia)"),
        "{report:?}"
    );
}

#[test]
fn unsigned_files_have_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("plain.mp4");
    write_clip(&video, 2);
    let error = provenance::read(&video, None).unwrap_err();
    assert!(matches!(error, ProvenanceError::NoManifest(_)), "{error}");
    assert!(error.to_string().ends_with("no C2PA manifest"), "{error}");
}

/// The position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn changed_video_bytes_make_it_invalid() {
    let signed = signed(|_| Vec::new());
    let mut bytes = std::fs::read(&signed.video).unwrap();
    // Flip bytes inside the media data box.
    let media = find(&bytes, b"mdat").expect("an mdat box") + 64;
    for byte in &mut bytes[media..media + 8] {
        *byte ^= 0x5A;
    }
    std::fs::write(&signed.video, &bytes).unwrap();
    let report = provenance::read(&signed.video, None).unwrap();
    assert_eq!(report.validity, Validity::Invalid, "{report:?}");
    assert!(
        report.problems.iter().any(|p| p.contains("mismatch")),
        "{report:?}"
    );
}

#[test]
fn a_forged_claim_is_invalid() {
    let signed = signed(|_| Vec::new());
    let mut bytes = std::fs::read(&signed.video).unwrap();
    // Claim another model inside the signed manifest (same length, so the file stays parseable).
    let model = find(&bytes, b"himmel-mini").expect("the model is in the manifest");
    bytes[model..model + 11].copy_from_slice(b"other-model");
    std::fs::write(&signed.video, &bytes).unwrap();
    match provenance::read(&signed.video, None) {
        Ok(report) => assert_eq!(report.validity, Validity::Invalid, "{report:?}"),
        Err(error) => assert!(error.to_string().contains("C2PA"), "{error}"),
    }
}

#[test]
fn bad_credentials_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let error = Credentials::from_files(&cert, &key).err().unwrap();
    assert!(
        error.to_string().starts_with("C2PA signing credentials"),
        "{error}"
    );
    let missing = Credentials::from_files(&dir.path().join("none.pem"), &key)
        .err()
        .unwrap();
    assert!(missing.to_string().contains("none.pem"), "{missing}");
}

#[test]
fn processes_starting_at_once_share_one_local_pair() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("c2pa");
    let made: Vec<bool> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Credentials::local(&folder).unwrap().1))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(made.iter().filter(|&&m| m).count(), 1, "{made:?}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["c2pa"], "no staging folders are left");
}
