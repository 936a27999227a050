//! Training for himmel-mini, in Rust on candle's autograd: the autoencoder first, then the
//! denoiser with its text encoder, on clips the procedural world renders on the fly. Every run
//! is a function of its recipe: checkpoints hold the optimizer's state, and a resumed run
//! repeats the steps an uninterrupted one would have taken.
#![deny(missing_docs)]

pub mod adversary;
pub mod autoencoder;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod denoiser;
pub mod ema;
pub mod error;
pub mod frozen;
pub mod init;
pub mod log;
pub mod optim;
pub mod predicted;
pub mod random;
pub mod token_map;
pub mod trainer;
pub mod widen;

pub use error::TrainError;
