//! `himmel world` end to end: sample clips, score them against their own JSON, expand prompts,
//! and reject bad specs and prompts clearly.

mod common;

use std::fs;

use common::*;

#[test]
fn sampled_clips_score_well_against_their_own_specs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clips");
    let out = out.to_str().unwrap();
    himmel_ok(&[
        "world", "sample", "--n", "6", "--out", out, "--seed", "11", "--format", "png", "--width",
        "96", "--height", "96",
    ]);
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("clips/000000.json")).unwrap())
            .unwrap();
    assert!(record["caption"].as_str().unwrap().len() > 40);
    assert_eq!(record["prompts"].as_array().unwrap().len(), 5);
    assert!(dir.path().join("clips/000005.png/000016.png").is_file());

    let aggregate: serde_json::Value =
        serde_json::from_str(&himmel_ok(&["world", "score", out])).unwrap();
    assert_eq!(aggregate["clips"], 6);
    for measure in [
        "color",
        "count",
        "shape",
        "motion",
        "physics",
        "consistency",
    ] {
        let value = aggregate["scores"][measure].as_f64().unwrap();
        assert!(value >= 0.8, "{measure} {value}");
    }
    assert!(dir.path().join("clips/000003.report.json").is_file());

    // The same clip against a prompt it does not match: colours and counts fall.
    let video = dir.path().join("clips/000000.png");
    let prompt = "four white stars spin in a room";
    let report: serde_json::Value = serde_json::from_str(&himmel_ok(&[
        "world",
        "score",
        video.to_str().unwrap(),
        "--prompt",
        prompt,
    ]))
    .unwrap();
    assert!(
        report["scores"]["count"].as_f64().unwrap() < 1.0,
        "{report}"
    );
}

#[test]
fn expand_reports_unknown_words_and_rejects_empty_prompts() {
    let output = himmel(&[
        "world",
        "expand",
        "ein roter Ball springt über die Wiese zorblax",
    ]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("did not understand: zorblax"), "{stderr}");
    let expansion: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(expansion["spec"]["background"], "grass");
    assert_eq!(expansion["spec"]["objects"][0]["color"], "red");
    assert!(himmel_err(&["world", "expand", " , "]).contains("the prompt is empty"));
}

#[test]
fn bad_specs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.safetensors");
    let out = dir.path().join("one");
    himmel_ok(&[
        "world",
        "sample",
        "--n",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--format",
        "safetensors",
    ]);
    fs::rename(out.join("000000.safetensors"), &video).unwrap();
    let spec = dir.path().join("spec.json");
    let video = video.to_str().unwrap();
    let spec_arg = spec.to_str().unwrap();
    for (text, expected) in [
        ("{not json", "not valid JSON"),
        (
            r#"{"background":"grass","objects":[{"shape":"blob"}]}"#,
            "does not hold a valid scene spec",
        ),
        (r#"{"background":"grass","objects":[]}"#, "1 to 4 objects"),
        (
            r#"{"background":"grass","objects":[{"shape":"ball","color":"red","size":"small","motion":"rest","start":[99,0]}]}"#,
            "start x is 99",
        ),
    ] {
        fs::write(&spec, text).unwrap();
        let message = himmel_err(&["world", "score", video, "--spec", spec_arg]);
        assert!(message.contains(expected), "{expected:?} not in {message}");
    }
}
