"""Stable Diffusion 3.5: StableDiffusion3Pipeline (CFG batched into one call)."""

from __future__ import annotations

from ..base import GuidanceStyle, ModelFamily


class StableDiffusion3(ModelFamily):
    key = "sd3"
    title = "Stable-Diffusion-3.5"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    guidance = GuidanceStyle("cfg", "guidance_scale")
    default_steps = 28
    default_guidance = 4.5
    example_model = "stable-diffusion-3.5-medium"
    example_sample = dict(steps=20, guidance=4.5, width=768, height=768, negative_prompt="blurry, low quality")

    # ComfyUI pads the T5 prompt to 77 tokens (comfy/text_encoders/sd3_clip.py), the pipeline to 256,
    # and SD3's joint attention has no text mask; ComfyUI also weights "(word:1.2)" in the CLIP prompts.
    conditioning_refusal = ("ComfyUI pads the T5 prompt to 77 tokens and the pipeline to 256; SD3 attends to the "
                            "padding without a mask, so the embeddings differ")

    supports_sequence_parallel = False
    supports_tensor_parallel = False

    def tensor_parallel_plan(self, transformer):
        return None  # no sharding plan for SD3 (vLLM-Omni's feature table marks it unsupported too)

    def sequence_parallel_plan(self, transformer):
        return None  # SD3's joint attention calls torch SDPA directly, outside diffusers' dispatcher

    def block_lists(self, transformer):
        return [("transformer_blocks", transformer.transformer_blocks)]

    def to_comfy_latent(self, pipe, latents, request):
        config = pipe.vae.config
        return latents / config.scaling_factor + config.shift_factor

    def build_tiny(self):
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        from ...tiny.parts import autoencoder_kl, clip_text_encoder, t5_text_encoder
        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import clip_tokenizer, t5_tokenizer

        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=64, pooled_projection_dim=64,
            out_channels=16, pos_embed_max_size=64, dual_attention_layers=(0,), qk_norm="rms_norm",
        )
        return StableDiffusion3Pipeline(
            scheduler=flow_match_scheduler(), vae=autoencoder_kl(1.5305, 0.0609),
            text_encoder=clip_text_encoder(True), tokenizer=clip_tokenizer(),
            # CLIP-G's tokenizer pads with "!" (token 0), as the release's tokenizer_2 does.
            text_encoder_2=clip_text_encoder(True), tokenizer_2=clip_tokenizer(pad_token="!"),
            text_encoder_3=t5_text_encoder(), tokenizer_3=t5_tokenizer(), transformer=transformer,
        )
