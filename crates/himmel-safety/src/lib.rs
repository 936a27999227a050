//! Responsible generation: the prompt [`policy`], checked before any work starts, and its
//! [`evaluation`] on labelled prompts; the invisible [`watermark`] in every generated frame and
//! the signed C2PA manifest ([`provenance`]) in every MP4.
#![deny(missing_docs)]

pub mod evaluation;
pub mod marked;
pub mod policy;
pub mod provenance;
pub mod watermark;

pub use marked::{MarkedError, MarkedWriter, Marks};
pub use policy::{Policy, PolicyError, Refusal};
