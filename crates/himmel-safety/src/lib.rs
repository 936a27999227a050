//! Responsible generation: the prompt [`policy`], checked before any work starts, and its
//! [`evaluation`] on labelled prompts; the invisible [`watermark`] in every generated frame.
#![deny(missing_docs)]

pub mod evaluation;
pub mod policy;
pub mod watermark;

pub use policy::{Policy, PolicyError, Refusal};
