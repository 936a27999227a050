"""Parity fixture for Himmel's Wan text-to-video pipeline: a tiny random WanPipeline (tokenizer,
UMT5 text encoder, transformer, VAE, UniPC scheduler as Wan 2.1 ships it) saved as a diffusers
folder with save_pretrained, and one run from given initial latents to frames, with a negative
prompt and classifier-free guidance; saved under tests/fixtures/wan/.

Reference: diffusers 0.42.1, transformers 5.x, tokenizers, torch 2.15 (CPU, float32). Seed 0.

    /tmp/ref/bin/python tools/reference/wan_pipeline.py
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "wan"
MAX_SEQUENCE_LENGTH = 16

torch.manual_seed(0)


def perturb(model):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


# A T5-style Unigram tokenizer over a small vocabulary, with single characters as a fallback.
words = "a red blue green ball cube bounce s on the grass sky over water in room slow ly blurry".split()
pieces = ["<pad>", "</s>", "<unk>"] + ["\u2581" + w for w in words] + ["\u2581"] + list("abcdefghijklmnopqrstuvwxyz")
vocab = [(piece, 0.0 if i < 3 else -float(i) / 10) for i, piece in enumerate(pieces)]
backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
backend.post_processor = processors.TemplateProcessing(
    single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
)
backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
tokenizer = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)

text_encoder = perturb(
    UMT5EncoderModel(
        UMT5Config(vocab_size=len(pieces), d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0)
    )
)
transformer = perturb(
    WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                          out_channels=4, text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, rope_max_seq_len=32)
)
vae = perturb(
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                     temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, -0.4],
                     latents_std=[1.5, 0.8, 2.0, 1.2])
)
scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                    flow_shift=3.0)
pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)
pipe.save_pretrained(OUT / "pipeline_tiny", safe_serialization=True)

cases = {}
for name, (height, width, frames, steps) in {"square": (32, 32, 5, 3), "wide": (16, 48, 9, 4)}.items():
    latents = torch.randn(1, 4, (frames - 1) // 4 + 1, height // 8, width // 8)
    video = pipe(
        prompt="a red ball bounces  on the grass &amp; sky",
        negative_prompt="blurry",
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=4.0,
        latents=latents.clone(),
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        output_type="np",
        return_dict=False,
    )[0]
    cases[f"{name}_latents"] = latents
    cases[f"{name}_frames"] = torch.from_numpy(video[0]).float().contiguous()
    print(name, video.shape)

save_file(cases, OUT / "pipeline_tiny_io.safetensors")
ids = tokenizer("a red ball bounces  on the grass &amp; sky").input_ids
print("ids", ids)
