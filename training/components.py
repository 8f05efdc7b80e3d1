"""The reference model's parts: the real Qwen-Image classes at a size a CPU trains in minutes.

Every builder is seeded by the caller (`torch.manual_seed`) so the same seed gives the same
initial weights. The text encoder is never trained: a frozen random Qwen2.5-VL still maps each
caption word to its own vector, and the DiT learns to read those.
"""

from __future__ import annotations

from .dataset import corpus

# QwenImagePipeline drops the first 34 tokens of its prompt template (the system prompt); the
# tokenizer must cut that prefix into exactly 34 tokens too, or caption words get dropped.
TEMPLATE_PREFIX_TOKENS = 34
_TEMPLATE_PREFIX = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n")
_TEMPLATE_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"

TEXT_HIDDEN = 64

# Real Qwen-Image scheduler_config.json (the dynamic shift the pipeline computes mu for).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    invert_sigmas=False, stochastic_sampling=False, use_karras_sigmas=False, use_exponential_sigmas=False,
    use_beta_sigmas=False,
)

VAE_CONFIG = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                  temperal_downsample=[False, True, True], dropout=0.0)

TRANSFORMER_CONFIG = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=6, attention_head_dim=32,
                          num_attention_heads=4, joint_attention_dim=TEXT_HIDDEN, guidance_embeds=False,
                          axes_dims_rope=(8, 12, 12))


def tokenizer():
    """Qwen2Tokenizer whose byte-level BPE makes every caption word and template word one token."""
    from transformers import Qwen2Tokenizer

    from omni_backend.tiny.tokenizers import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, train_byte_level_bpe

    # The template text repeated like the captions: its words are then merged as readily.
    texts = corpus() + [_TEMPLATE_PREFIX + _TEMPLATE_SUFFIX] * 100
    vocab, merges = train_byte_level_bpe(texts, vocab_size=2000, special_tokens=QWEN_SPECIAL_TOKENS)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    prefix = len(tok(_TEMPLATE_PREFIX).input_ids)
    if prefix != TEMPLATE_PREFIX_TOKENS:
        raise RuntimeError(f"the prompt template prefix is {prefix} tokens, QwenImagePipeline drops "
                           f"{TEMPLATE_PREFIX_TOKENS}")
    return tok


def text_encoder(tok):
    """Tiny Qwen2.5-VL (2 layers, hidden 64) in eval mode; its vision tower is never used."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab_size = len(tok)
    vocab = vocab_size + 8  # room for the vision marker ids the config requires
    head_dim = 16
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN, num_hidden_layers=2,
                         num_attention_heads=TEXT_HIDDEN // head_dim, num_key_value_heads=2, vocab_size=vocab,
                         bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                         eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), rope_theta=1000000.0,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3], "rope_type": "default"}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2,
                           out_hidden_size=TEXT_HIDDEN, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, fullatt_block_indexes=[0]),
        vision_start_token_id=vocab_size, vision_end_token_id=vocab_size + 1, vision_token_id=vocab_size + 2,
        image_token_id=vocab_size + 3, video_token_id=vocab_size + 4, hidden_size=TEXT_HIDDEN, vocab_size=vocab,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model.requires_grad_(False)


def vae(latents_mean=None, latents_std=None):
    from diffusers import AutoencoderKLQwenImage

    stats = {}
    if latents_mean is not None:
        stats = dict(latents_mean=[float(v) for v in latents_mean], latents_std=[float(v) for v in latents_std])
    return AutoencoderKLQwenImage(**VAE_CONFIG, **stats)


def transformer():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(**TRANSFORMER_CONFIG)


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def pipeline(vae_model, transformer_model, text_encoder_model, tokenizer_obj):
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline(scheduler=scheduler(), vae=vae_model, text_encoder=text_encoder_model,
                             tokenizer=tokenizer_obj, transformer=transformer_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe
