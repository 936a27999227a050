//! Prompt expansion against a hand-written set of English and German prompts
//! (`prompts.txt`, which `himmel eval` also uses as held-out prompts): at least 95% of the asked attributes must come out as intended.

use himmel_world::expand::expand;
use himmel_world::spec::SceneSpec;
use rand::SeedableRng;
use serde_json::Value;

/// The JSON name of a spec value, e.g. "red", "pan_left", "plain_white".
fn name(value: Value) -> String {
    match value {
        Value::String(text) => text,
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| format!("{k}_{}", name(v)))
            .collect(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Checks one expectation; returns a description of the failure, if any.
fn check(
    spec: &SceneSpec,
    unknown: &[String],
    expectation: &str,
    object_index: &mut usize,
) -> Option<String> {
    let (key, expected) = expectation.split_once('=')?;
    let actual = match key {
        "bg" => name(serde_json::to_value(spec.background).unwrap()),
        "cam" => name(serde_json::to_value(spec.camera).unwrap()),
        "n" => spec.objects.len().to_string(),
        "unknown" => unknown.join(","),
        "obj" => {
            let Some(object) = spec.objects.get(*object_index) else {
                return Some(format!("no object {}", *object_index));
            };
            *object_index += 1;
            let fields = [
                name(serde_json::to_value(object.color).unwrap()),
                name(serde_json::to_value(object.shape).unwrap()),
                name(serde_json::to_value(object.motion).unwrap()),
                name(serde_json::to_value(object.direction).unwrap()),
            ];
            let wanted: Vec<&str> = expected.split(':').collect();
            let wrong: Vec<String> = wanted
                .iter()
                .zip(&fields)
                .filter(|(want, got)| **want != "-" && **want != got.as_str())
                .map(|(want, got)| format!("{want}!={got}"))
                .collect();
            return (!wrong.is_empty())
                .then(|| format!("object {}: {}", *object_index - 1, wrong.join(" ")));
        }
        other => panic!("unknown expectation key {other}"),
    };
    (actual != expected).then(|| format!("{key}: expected {expected}, got {actual}"))
}

#[test]
fn prompts_map_to_their_intended_attributes() {
    let text = himmel_world::HELD_OUT_PROMPTS;
    let (mut checks, mut failures, mut prompts) = (0, Vec::new(), 0);
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (prompt, expectations) = line.split_once(" => ").expect("PROMPT => EXPECTATIONS");
        let expansion =
            expand(prompt, &mut rand_chacha::ChaCha8Rng::seed_from_u64(prompts)).unwrap();
        expansion.spec.validate().unwrap();
        prompts += 1;
        let mut expectations: Vec<&str> = expectations.split_whitespace().collect();
        if !expectations.iter().any(|e| e.starts_with("unknown=")) {
            expectations.push("unknown=");
        }
        let mut object_index = 0;
        for expectation in expectations {
            checks += 1;
            if let Some(failure) = check(
                &expansion.spec,
                &expansion.unknown_words,
                expectation,
                &mut object_index,
            ) {
                failures.push(format!("{prompt:?}: {failure}"));
            }
        }
    }
    assert!(
        prompts >= 100,
        "the set needs at least 100 prompts, has {prompts}"
    );
    let accuracy = 1.0 - failures.len() as f64 / checks as f64;
    println!(
        "{prompts} prompts, {checks} attributes, accuracy {:.1}%",
        accuracy * 100.0
    );
    for failure in &failures {
        println!("  {failure}");
    }
    assert!(
        accuracy >= 0.95,
        "accuracy {:.1}% below 95%:\n{}",
        accuracy * 100.0,
        failures.join("\n")
    );
}

#[test]
fn generated_short_prompts_expand_back_to_their_scenes() {
    let (mut total, mut failures) = (0, Vec::new());
    for index in 0..200 {
        let mut rng = himmel_world::sample::clip_rng(9, index);
        let spec = SceneSpec::sample(&mut rng);
        for prompt in himmel_world::caption::short_prompts(&spec, &mut rng, 3, 2) {
            total += 1;
            let expansion = expand(
                &prompt.text,
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(index),
            )
            .unwrap();
            let described = |s: &SceneSpec| {
                let mut objects: Vec<_> = s
                    .objects
                    .iter()
                    .map(|o| (o.color, o.shape, o.motion))
                    .collect();
                objects.sort_by_key(|o| format!("{o:?}"));
                (s.background, s.camera, objects)
            };
            if described(&expansion.spec) != described(&spec) || !expansion.unknown_words.is_empty()
            {
                failures.push(format!(
                    "{:?}: {:?} unknown {:?}",
                    prompt.text,
                    described(&expansion.spec),
                    expansion.unknown_words
                ));
            }
        }
    }
    let accuracy = 1.0 - failures.len() as f64 / total as f64;
    println!(
        "{total} generated prompts, {:.1}% expand to their scene",
        accuracy * 100.0
    );
    failures.iter().take(15).for_each(|f| println!("  {f}"));
    assert!(accuracy >= 0.95, "{:.1}%", accuracy * 100.0);
}
