//! Key names of the original Wan release's UMT5 file (`models_t5_umt5-xxl-enc-bf16.pth`). Model
//! code asks for transformers names; this gives the original name of each.

/// The original name of a transformers UMT5 encoder key.
pub fn original_umt5_name(name: &str) -> String {
    match name {
        "shared.weight" | "encoder.embed_tokens.weight" => return "token_embedding.weight".into(),
        "encoder.final_layer_norm.weight" => return "norm.weight".into(),
        _ => {}
    }
    let Some((index, key)) = name
        .strip_prefix("encoder.block.")
        .and_then(|rest| rest.split_once('.'))
    else {
        return name.to_string();
    };
    const LAYER: [(&str, &str); 9] = [
        ("layer.0.layer_norm.", "norm1."),
        (
            "layer.0.SelfAttention.relative_attention_bias.",
            "pos_embedding.embedding.",
        ),
        ("layer.0.SelfAttention.", "attn."),
        ("layer.1.layer_norm.", "norm2."),
        ("layer.1.DenseReluDense.wi_0.", "ffn.gate.0."),
        ("layer.1.DenseReluDense.wi_1.", "ffn.fc1."),
        ("layer.1.DenseReluDense.wo.", "ffn.fc2."),
        ("layer.0.", "attn."),
        ("layer.1.", "ffn."),
    ];
    let key = LAYER
        .iter()
        .find_map(|(from, to)| key.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .unwrap_or_else(|| key.to_string());
    format!("blocks.{index}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umt5_names_follow_the_conversion_table() {
        let pairs = [
            ("shared.weight", "token_embedding.weight"),
            (
                "encoder.block.4.layer.0.layer_norm.weight",
                "blocks.4.norm1.weight",
            ),
            (
                "encoder.block.4.layer.0.SelfAttention.q.weight",
                "blocks.4.attn.q.weight",
            ),
            (
                "encoder.block.4.layer.0.SelfAttention.relative_attention_bias.weight",
                "blocks.4.pos_embedding.embedding.weight",
            ),
            (
                "encoder.block.4.layer.1.DenseReluDense.wi_0.weight",
                "blocks.4.ffn.gate.0.weight",
            ),
            (
                "encoder.block.4.layer.1.DenseReluDense.wo.weight",
                "blocks.4.ffn.fc2.weight",
            ),
            ("encoder.final_layer_norm.weight", "norm.weight"),
        ];
        for (hf, original) in pairs {
            assert_eq!(original_umt5_name(hf), original, "{hf}");
        }
    }
}
