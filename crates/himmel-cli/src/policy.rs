//! `himmel policy check|eval`: the prompt policy on one prompt or on a labelled set.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use himmel_safety::Policy;
use himmel_safety::evaluation::{evaluate, read_cases};

/// Arguments of `himmel policy`.
#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
    /// A policy file that extends or relaxes the default policy.
    #[arg(long, global = true, value_name = "FILE")]
    policy: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Says whether a prompt may be generated, and if not, which category refuses it.
    Check {
        /// The prompt.
        prompt: String,
    },
    /// Precision and recall per category on labelled prompts (`LABEL<TAB>PROMPT` lines).
    Eval {
        /// The labelled prompts, e.g. tests/fixtures/policy/prompts.tsv.
        file: PathBuf,
    },
}

/// The default policy, changed by the file at `path` if given.
pub fn load(path: Option<&Path>) -> Result<Policy> {
    let policy = Policy::standard();
    match path {
        None => Ok(policy),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the policy file {}", path.display()))?;
            policy
                .with_overrides(&text)
                .with_context(|| format!("in the policy file {}", path.display()))
        }
    }
}

/// Runs the policy command.
pub fn run(args: &PolicyArgs) -> Result<()> {
    let policy = load(args.policy.as_deref())?;
    match &args.command {
        PolicyCommand::Check { prompt } => {
            policy.check(prompt)?;
            println!("allowed");
        }
        PolicyCommand::Eval { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let cases = read_cases(&text).map_err(anyhow::Error::msg)?;
            let (figures, mistakes) = evaluate(&policy, &cases);
            println!("{} prompts", cases.len());
            println!(
                "{:16} {:>9} {:>9} {:>9} {:>7}",
                "category", "labelled", "refused", "precision", "recall"
            );
            for f in &figures {
                println!(
                    "{:16} {:>9} {:>9} {:>9.3} {:>7.3}",
                    f.category,
                    f.labelled,
                    f.predicted,
                    f.precision(),
                    f.recall()
                );
            }
            for m in &mistakes {
                println!(
                    "labelled {}, sorted as {}: {}",
                    m.label, m.predicted, m.prompt
                );
            }
        }
    }
    Ok(())
}
