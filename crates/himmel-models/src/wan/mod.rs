//! Wan 2.1 (Wan-AI, 2025: "Wan: Open and Advanced Large-Scale Video Generative Models"), as
//! diffusers implements it: `WanTransformer3DModel`. Weights: `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`
//! style folders (`transformer/`). Parity with diffusers is tested on tiny random models
//! (`tools/reference/wan_transformer.py`).

pub mod checkpoint;
pub mod config;
mod folded_text;
pub mod rope;
pub mod transformer;
pub mod vae;
pub mod vae_tiling;

pub use config::WanTransformerConfig;
pub use transformer::{StepCache, WanTransformer};
pub use vae::{CellReduction, LatentStatistics, WanVae, WanVaeConfig, WeightSource, latent_cells};
pub use vae_tiling::VaeTiling;
