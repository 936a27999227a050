//! Responsible generation: the prompt [`policy`], checked before any work starts, and its
//! [`evaluation`] on labelled prompts.
#![deny(missing_docs)]

pub mod evaluation;
pub mod policy;

pub use policy::{Policy, PolicyError, Refusal};
