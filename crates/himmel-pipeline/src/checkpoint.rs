//! Weights in any of the layouts users have: diffusers/transformers names, or the original Wan
//! names (ComfyUI's repackaged files use them too, the transformer with a
//! `model.diffusion_model.` prefix). Files are safetensors (read a tensor at a time, not mapped:
//! see `safetensors_files`) or, for the original
//! VAE and text encoder, PyTorch `.pth` files read without running pickle code. The layout is
//! detected from key names; models always ask for diffusers names and a rename maps them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use himmel_models::umt5::Umt5Config;
use himmel_models::umt5::checkpoint::original_umt5_name;
use himmel_models::wan::WanTransformerConfig;
use himmel_models::wan::checkpoint::original_transformer_name;

use crate::PipelineError;
use crate::safetensors_files::{SafetensorsFiles, SharedFiles};

/// The tensors of one model part: their names and shapes, and where they are.
pub struct Checkpoint {
    files: Vec<PathBuf>,
    shapes: HashMap<String, Vec<usize>>,
    /// The safetensors files' tensors; `None` for a `.pth` file.
    safetensors: Option<Arc<SafetensorsFiles>>,
}

/// Which naming a checkpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLayout {
    /// diffusers (transformer, VAE) or transformers (text encoder) names.
    Diffusers,
    /// The original Wan release's names, after stripping `prefix`.
    Original {
        /// Prefix before every key (ComfyUI: `model.diffusion_model.`), or empty.
        prefix: String,
    },
}

impl Checkpoint {
    /// Opens safetensors files (all shards of one part) or one `.pth` file.
    pub fn open(files: &[PathBuf]) -> Result<Self, PipelineError> {
        let first = files
            .first()
            .ok_or_else(|| PipelineError::load("", "no weight files given"))?;
        let pickled = first
            .extension()
            .is_some_and(|e| e == "pth" || e == "pt" || e == "ckpt");
        let mut shapes = HashMap::new();
        let safetensors = if pickled {
            let tensors = candle_core::pickle::PthTensors::new(first, None)
                .map_err(|e| PipelineError::load_tensor(first, e))?;
            for (name, info) in tensors.tensor_infos() {
                shapes.insert(name.clone(), info.layout.shape().dims().to_vec());
            }
            None
        } else {
            let tensors = SafetensorsFiles::open(files)?;
            for (name, shape) in tensors.shapes() {
                shapes.insert(name.clone(), shape.to_vec());
            }
            Some(Arc::new(tensors))
        };
        if shapes.is_empty() {
            return Err(PipelineError::load(first, "holds no tensors"));
        }
        Ok(Self {
            files: files.to_vec(),
            shapes,
            safetensors,
        })
    }

    /// Shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// Layout of a Wan transformer checkpoint, from its key names.
    pub fn transformer_layout(&self) -> Result<KeyLayout, PipelineError> {
        for prefix in ["", "model.diffusion_model.", "diffusion_model."] {
            if self.has(&format!("{prefix}blocks.0.self_attn.q.weight")) {
                return Ok(KeyLayout::Original {
                    prefix: prefix.into(),
                });
            }
        }
        if self.has("blocks.0.attn1.to_q.weight") {
            return Ok(KeyLayout::Diffusers);
        }
        Err(self.unknown("a Wan transformer"))
    }

    /// Layout of a Wan VAE checkpoint.
    pub fn vae_layout(&self) -> Result<KeyLayout, PipelineError> {
        if self.has("encoder.conv1.weight") {
            Ok(KeyLayout::Original {
                prefix: String::new(),
            })
        } else if self.has("encoder.conv_in.weight") {
            Ok(KeyLayout::Diffusers)
        } else {
            Err(self.unknown("a Wan VAE"))
        }
    }

    /// Layout of a UMT5 encoder checkpoint.
    pub fn umt5_layout(&self) -> Result<KeyLayout, PipelineError> {
        if self.has("token_embedding.weight") {
            Ok(KeyLayout::Original {
                prefix: String::new(),
            })
        } else if self.has("shared.weight") || self.has("encoder.embed_tokens.weight") {
            Ok(KeyLayout::Diffusers)
        } else {
            Err(self.unknown("a UMT5 text encoder"))
        }
    }

    fn unknown(&self, what: &str) -> PipelineError {
        let mut names: Vec<&String> = self.shapes.keys().collect();
        names.sort();
        let sample: Vec<&str> = names.iter().take(4).map(|s| s.as_str()).collect();
        PipelineError::load(
            &self.files[0],
            format!(
                "does not look like {what} (keys such as {})",
                sample.join(", ")
            ),
        )
    }

    /// A VarBuilder that answers diffusers names from this checkpoint, renaming through
    /// `original` when the layout is the original one.
    pub fn var_builder(
        &self,
        layout: &KeyLayout,
        original: impl Fn(&str) -> String + Send + Sync + 'static,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>, PipelineError> {
        let vb = match &self.safetensors {
            Some(files) => VarBuilder::from_backend(
                Box::new(SharedFiles(files.clone())),
                dtype,
                device.clone(),
            ),
            None => VarBuilder::from_pth(&self.files[0], dtype, device)
                .map_err(|e| PipelineError::load_tensor(&self.files[0], e))?,
        };
        Ok(match layout {
            KeyLayout::Diffusers => vb,
            KeyLayout::Original { prefix } => {
                let prefix = prefix.clone();
                vb.rename_f(move |name: &str| format!("{prefix}{}", original(name)))
            }
        })
    }

    /// Rows `ids` of the 2-D tensor `name` (as stored) as `[ids.len(), columns]` in `dtype`,
    /// reading only those rows from safetensors files (a `.pth` file is read whole).
    pub fn rows(
        &self,
        name: &str,
        ids: &[u32],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, PipelineError> {
        let file = &self.files[0];
        let fail = |e| PipelineError::load_tensor(file, e);
        let rows = match self.shape(name) {
            Some(&[rows, _]) => rows,
            Some(shape) => {
                return Err(PipelineError::load(
                    file,
                    format!("{name} has shape {shape:?}, expected 2 dimensions"),
                ));
            }
            None => return Err(PipelineError::load(file, format!("missing tensor {name}"))),
        };
        if let Some(id) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(PipelineError::load(
                file,
                format!("token id {id} is past the {rows} rows of {name}"),
            ));
        }
        let table = match &self.safetensors {
            Some(files) => files.rows(name, ids, device).map_err(fail)?,
            None => {
                let table = candle_core::pickle::PthTensors::new(file, None)
                    .and_then(|tensors| tensors.get(name))
                    .map_err(fail)?
                    .ok_or_else(|| PipelineError::load(file, format!("missing tensor {name}")))?;
                table
                    .to_device(device)?
                    .index_select(&Tensor::new(ids, device)?, 0)?
            }
        };
        Ok(table.to_dtype(dtype)?)
    }

    /// The transformer configuration of the real Wan 2.1 models (heads of 128 channels), read
    /// from tensor shapes.
    pub fn transformer_config(
        &self,
        layout: &KeyLayout,
    ) -> Result<WanTransformerConfig, PipelineError> {
        let prefix = match layout {
            KeyLayout::Original { prefix } => prefix.clone(),
            KeyLayout::Diffusers => String::new(),
        };
        let name = |diffusers: &str| match layout {
            KeyLayout::Diffusers => diffusers.to_string(),
            KeyLayout::Original { .. } => {
                format!("{prefix}{}", original_transformer_name(diffusers))
            }
        };
        let shape = |diffusers: &str| {
            self.shape(&name(diffusers))
                .map(<[usize]>::to_vec)
                .ok_or_else(|| {
                    PipelineError::load(
                        &self.files[0],
                        format!("missing tensor {}", name(diffusers)),
                    )
                })
        };
        let patch = shape("patch_embedding.weight")?;
        let [dim, in_channels, pt, ph, pw] = patch[..] else {
            return Err(PipelineError::load(
                &self.files[0],
                format!("patch_embedding has shape {patch:?}, expected 5 dimensions"),
            ));
        };
        let layers = (0..)
            .take_while(|i| self.has(&name(&format!("blocks.{i}.scale_shift_table"))))
            .count();
        if dim % 128 != 0 || layers == 0 {
            return Err(PipelineError::load(
                &self.files[0],
                format!("width {dim} with {layers} blocks is not a Wan 2.1 model"),
            ));
        }
        Ok(WanTransformerConfig {
            patch_size: [pt, ph, pw],
            num_attention_heads: dim / 128,
            attention_head_dim: 128,
            in_channels,
            out_channels: shape("proj_out.weight")?[0] / (pt * ph * pw),
            text_dim: shape("condition_embedder.text_embedder.linear_1.weight")?[1],
            freq_dim: shape("condition_embedder.time_embedder.linear_1.weight")?[1],
            ffn_dim: shape("blocks.0.ffn.net.0.proj.weight")?[0],
            num_layers: layers,
            ..WanTransformerConfig::default()
        })
    }

    /// The UMT5 configuration read from tensor shapes.
    pub fn umt5_config(&self, layout: &KeyLayout) -> Result<Umt5Config, PipelineError> {
        let name = |hf: &str| match layout {
            KeyLayout::Diffusers => hf.to_string(),
            KeyLayout::Original { .. } => original_umt5_name(hf),
        };
        let shape = |hf: &str| {
            self.shape(&name(hf)).map(<[usize]>::to_vec).ok_or_else(|| {
                PipelineError::load(&self.files[0], format!("missing tensor {}", name(hf)))
            })
        };
        let embedding = if self.has(&name("shared.weight")) {
            shape("shared.weight")?
        } else {
            shape("encoder.embed_tokens.weight")?
        };
        let bias = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?;
        let query = shape("encoder.block.0.layer.0.SelfAttention.q.weight")?;
        let layers = (0..)
            .take_while(|i| {
                self.has(&name(&format!(
                    "encoder.block.{i}.layer.0.layer_norm.weight"
                )))
            })
            .count();
        let json = serde_json::json!({
            "vocab_size": embedding[0],
            "d_model": embedding[1],
            "num_heads": bias[1],
            "relative_attention_num_buckets": bias[0],
            "d_kv": query[0] / bias[1],
            "d_ff": shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")?[0],
            "num_layers": layers,
        });
        serde_json::from_value(json).map_err(|e| PipelineError::load(&self.files[0], e))
    }
}
