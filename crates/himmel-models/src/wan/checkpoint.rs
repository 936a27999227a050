//! Key names of the original Wan release (also used by ComfyUI's repackaged files, there with a
//! `model.diffusion_model.` prefix on the transformer). Model code asks for diffusers names; these
//! functions give the original name of each, for `VarBuilder::rename_f`.

/// The original name of a diffusers `WanTransformer3DModel` key. Note the swap: diffusers'
/// `norm2` (the affine LayerNorm before cross-attention) is the original `norm3`.
pub fn original_transformer_name(name: &str) -> String {
    const TOP: [(&str, &str); 7] = [
        (
            "condition_embedder.text_embedder.linear_1.",
            "text_embedding.0.",
        ),
        (
            "condition_embedder.text_embedder.linear_2.",
            "text_embedding.2.",
        ),
        (
            "condition_embedder.time_embedder.linear_1.",
            "time_embedding.0.",
        ),
        (
            "condition_embedder.time_embedder.linear_2.",
            "time_embedding.2.",
        ),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("proj_out.", "head.head."),
        ("scale_shift_table", "head.modulation"),
    ];
    const BLOCK: [(&str, &str); 9] = [
        ("scale_shift_table", "modulation"),
        ("attn1.to_out.0.", "self_attn.o."),
        ("attn1.to_", "self_attn."),
        ("attn1.", "self_attn."),
        ("attn2.to_out.0.", "cross_attn.o."),
        ("attn2.to_", "cross_attn."),
        ("attn2.", "cross_attn."),
        ("norm2.", "norm3."),
        ("ffn.net.0.proj.", "ffn.0."),
    ];
    if let Some((index, key)) = name
        .strip_prefix("blocks.")
        .and_then(|rest| rest.split_once('.'))
    {
        let key = BLOCK
            .iter()
            .chain(&[("ffn.net.2.", "ffn.2.")])
            .find_map(|(from, to)| key.strip_prefix(from).map(|rest| format!("{to}{rest}")))
            .unwrap_or_else(|| key.to_string());
        return format!("blocks.{index}.{key}");
    }
    TOP.iter()
        .find_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .unwrap_or_else(|| name.to_string())
}

/// The original name of a residual block key (`norm1.gamma` is `residual.0.gamma`, ...).
fn original_residual_key(key: &str) -> String {
    const RESIDUAL: [(&str, &str); 5] = [
        ("norm1.", "residual.0."),
        ("conv1.", "residual.2."),
        ("norm2.", "residual.3."),
        ("conv2.", "residual.6."),
        ("conv_shortcut.", "shortcut."),
    ];
    RESIDUAL
        .iter()
        .find_map(|(from, to)| key.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .unwrap_or_else(|| key.to_string())
}

/// The original name of a diffusers `AutoencoderKLWan` key; `num_res_blocks` (2 for Wan 2.1)
/// fixes how the original flattens the decoder's stages.
pub fn original_vae_name(name: &str, num_res_blocks: usize) -> String {
    match name {
        n if n.starts_with("quant_conv.") => return n.replacen("quant_conv.", "conv1.", 1),
        n if n.starts_with("post_quant_conv.") => {
            return n.replacen("post_quant_conv.", "conv2.", 1);
        }
        _ => {}
    }
    let Some((coder, key)) = name.split_once('.') else {
        return name.to_string();
    };
    let key = if let Some(rest) = key.strip_prefix("conv_in.") {
        format!("conv1.{rest}")
    } else if let Some(rest) = key.strip_prefix("norm_out.") {
        format!("head.0.{rest}")
    } else if let Some(rest) = key.strip_prefix("conv_out.") {
        format!("head.2.{rest}")
    } else if let Some(rest) = key.strip_prefix("mid_block.resnets.") {
        let (index, inner) = rest.split_once('.').unwrap_or((rest, ""));
        let middle = if index == "0" { 0 } else { 2 };
        format!("middle.{middle}.{}", original_residual_key(inner))
    } else if let Some(rest) = key.strip_prefix("mid_block.attentions.0.") {
        format!("middle.1.{rest}")
    } else if let Some(rest) = key.strip_prefix("down_blocks.") {
        let (index, inner) = rest.split_once('.').unwrap_or((rest, ""));
        format!("downsamples.{index}.{}", original_residual_key(inner))
    } else if let Some(rest) = key.strip_prefix("up_blocks.") {
        let parse = |text: &str| text.parse::<usize>().unwrap_or(0);
        let (stage, inner) = rest.split_once('.').unwrap_or((rest, ""));
        let per_stage = num_res_blocks + 2;
        if let Some(rest) = inner.strip_prefix("resnets.") {
            let (index, inner) = rest.split_once('.').unwrap_or((rest, ""));
            format!(
                "upsamples.{}.{}",
                parse(stage) * per_stage + parse(index),
                original_residual_key(inner)
            )
        } else if let Some(rest) = inner.strip_prefix("upsamplers.0.") {
            format!(
                "upsamples.{}.{rest}",
                parse(stage) * per_stage + num_res_blocks + 1
            )
        } else {
            key.to_string()
        }
    } else {
        key.to_string()
    };
    format!("{coder}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformer_names_follow_the_conversion_table() {
        let pairs = [
            ("patch_embedding.weight", "patch_embedding.weight"),
            (
                "condition_embedder.text_embedder.linear_2.bias",
                "text_embedding.2.bias",
            ),
            (
                "condition_embedder.time_proj.weight",
                "time_projection.1.weight",
            ),
            ("blocks.3.scale_shift_table", "blocks.3.modulation"),
            ("blocks.3.attn1.to_q.weight", "blocks.3.self_attn.q.weight"),
            ("blocks.3.attn1.to_out.0.bias", "blocks.3.self_attn.o.bias"),
            (
                "blocks.3.attn2.norm_k.weight",
                "blocks.3.cross_attn.norm_k.weight",
            ),
            ("blocks.12.norm2.weight", "blocks.12.norm3.weight"),
            ("blocks.0.ffn.net.0.proj.weight", "blocks.0.ffn.0.weight"),
            ("blocks.0.ffn.net.2.bias", "blocks.0.ffn.2.bias"),
            ("proj_out.weight", "head.head.weight"),
            ("scale_shift_table", "head.modulation"),
        ];
        for (diffusers, original) in pairs {
            assert_eq!(
                original_transformer_name(diffusers),
                original,
                "{diffusers}"
            );
        }
    }

    #[test]
    fn vae_names_follow_the_conversion_table() {
        let pairs = [
            ("encoder.conv_in.weight", "encoder.conv1.weight"),
            (
                "encoder.down_blocks.3.conv_shortcut.bias",
                "encoder.downsamples.3.shortcut.bias",
            ),
            (
                "encoder.down_blocks.0.norm1.gamma",
                "encoder.downsamples.0.residual.0.gamma",
            ),
            (
                "encoder.down_blocks.5.time_conv.weight",
                "encoder.downsamples.5.time_conv.weight",
            ),
            (
                "encoder.mid_block.resnets.1.conv2.weight",
                "encoder.middle.2.residual.6.weight",
            ),
            (
                "decoder.mid_block.attentions.0.to_qkv.weight",
                "decoder.middle.1.to_qkv.weight",
            ),
            ("encoder.norm_out.gamma", "encoder.head.0.gamma"),
            ("decoder.conv_out.bias", "decoder.head.2.bias"),
            ("quant_conv.weight", "conv1.weight"),
            ("post_quant_conv.bias", "conv2.bias"),
            (
                "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
                "decoder.upsamples.4.shortcut.weight",
            ),
            (
                "decoder.up_blocks.3.resnets.2.norm2.gamma",
                "decoder.upsamples.14.residual.3.gamma",
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.resample.1.weight",
                "decoder.upsamples.11.resample.1.weight",
            ),
            (
                "decoder.up_blocks.1.upsamplers.0.time_conv.bias",
                "decoder.upsamples.7.time_conv.bias",
            ),
        ];
        for (diffusers, original) in pairs {
            assert_eq!(original_vae_name(diffusers, 2), original, "{diffusers}");
        }
    }
}
