"""The real sizes of Wan 2.1's models, shared by the scripts that build them with random weights."""

# Wan 2.1's text encoder, UMT5-XXL's encoder half.
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
)

# WanTransformer3DModel arguments of the two text-to-video models.
WAN_1_3B = dict(num_attention_heads=12, ffn_dim=8960, num_layers=30)
WAN_14B = dict(num_attention_heads=40, ffn_dim=13824, num_layers=40)
