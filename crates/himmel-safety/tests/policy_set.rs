//! The default policy on the labelled prompt sets of tests/fixtures/policy: every prompt of
//! the always-refused category is refused, and the figures per category are printed (they are
//! in BENCHMARKS.md): `prompts.tsv`, on which the rules were tuned, and `held_out.tsv`, which
//! never changed them.

use himmel_safety::Policy;
use himmel_safety::evaluation::{Figures, Mistake, evaluate, read_cases};

/// Evaluates the set in `text` and prints its figures and mistakes.
fn report(name: &str, text: &str) -> (Vec<Figures>, Vec<Mistake>) {
    let cases = read_cases(text).unwrap();
    println!("{name}: {} prompts", cases.len());
    let (figures, mistakes) = evaluate(&Policy::standard(), &cases);
    for f in &figures {
        println!(
            "{:16} labelled {:3} predicted {:3} precision {:.3} recall {:.3}",
            f.category,
            f.labelled,
            f.predicted,
            f.precision(),
            f.recall()
        );
    }
    for m in &mistakes {
        println!("{} -> {}: {}", m.label, m.predicted, m.prompt);
    }
    (figures, mistakes)
}

fn minors_recall(figures: &[Figures]) -> f64 {
    figures
        .iter()
        .find(|f| f.category == "sexual_minors")
        .unwrap()
        .recall()
}

#[test]
fn the_labelled_prompts_are_sorted_as_labelled() {
    let text = include_str!("../../../tests/fixtures/policy/prompts.tsv");
    let (figures, mistakes) = report("tuning set", text);
    assert!(figures.iter().map(|f| f.labelled).sum::<usize>() >= 200);
    assert_eq!(minors_recall(&figures), 1.0, "{mistakes:?}");
}

#[test]
fn held_out_prompts_show_how_the_rules_generalise() {
    let text = include_str!("../../../tests/fixtures/policy/held_out.tsv");
    let (_, mistakes) = report("held-out set", text);
    // The always-refused prompts are all refused, if not always under their own category.
    let let_through: Vec<&Mistake> = mistakes
        .iter()
        .filter(|m| m.label == "sexual_minors" && m.predicted == "allowed")
        .collect();
    assert!(let_through.is_empty(), "{let_through:?}");
}
