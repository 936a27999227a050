//! How well a [`Policy`] sorts labelled prompts: precision and recall per category.

use crate::Policy;

/// The label of prompts that must pass.
pub const ALLOWED: &str = "allowed";

/// One labelled prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// A category id, or [`ALLOWED`].
    pub label: String,
    /// The prompt.
    pub prompt: String,
}

/// Reads `LABEL<TAB>PROMPT` lines (`#` starts a comment line).
pub fn read_cases(text: &str) -> Result<Vec<Case>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            let (label, prompt) = line
                .split_once('\t')
                .ok_or_else(|| format!("line {}: expected LABEL<TAB>PROMPT", index + 1))?;
            Ok(Case {
                label: label.trim().to_string(),
                prompt: prompt.trim().to_string(),
            })
        })
        .collect()
}

/// The figures of one category (or of [`ALLOWED`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// The category id.
    pub category: String,
    /// Prompts labelled with it.
    pub labelled: usize,
    /// Prompts the policy put in it.
    pub predicted: usize,
    /// Prompts both.
    pub correct: usize,
}

impl Figures {
    /// Share of the predicted that were right (1 when nothing was predicted).
    pub fn precision(&self) -> f64 {
        ratio(self.correct, self.predicted)
    }

    /// Share of the labelled that were found (1 when nothing was labelled).
    pub fn recall(&self) -> f64 {
        ratio(self.correct, self.labelled)
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// A prompt the policy sorted otherwise than its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// The label.
    pub label: String,
    /// What the policy said.
    pub predicted: String,
    /// The prompt.
    pub prompt: String,
}

/// Figures per category (the policy's, then [`ALLOWED`]) and the mistakes.
pub fn evaluate(policy: &Policy, cases: &[Case]) -> (Vec<Figures>, Vec<Mistake>) {
    let predictions: Vec<String> = cases
        .iter()
        .map(|case| match policy.check(&case.prompt) {
            Ok(()) => ALLOWED.to_string(),
            Err(refusal) => refusal.category,
        })
        .collect();
    let mut names: Vec<&str> = policy.categories();
    names.push(ALLOWED);
    let figures = names
        .iter()
        .map(|&name| Figures {
            category: name.to_string(),
            labelled: cases.iter().filter(|c| c.label == name).count(),
            predicted: predictions.iter().filter(|p| *p == name).count(),
            correct: cases
                .iter()
                .zip(&predictions)
                .filter(|(c, p)| c.label == name && *p == name)
                .count(),
        })
        .collect();
    let mistakes = cases
        .iter()
        .zip(predictions)
        .filter(|(case, predicted)| &case.label != predicted)
        .map(|(case, predicted)| Mistake {
            label: case.label.clone(),
            predicted,
            prompt: case.prompt.clone(),
        })
        .collect();
    (figures, mistakes)
}
