"""Qwen-Image (and Qwen-Image-2512, same architecture): QwenImagePipeline."""

from __future__ import annotations

from ...blocks.block_io import block_arguments
from ..base import GATHERED_COLWISE, GuidanceStyle, ModelFamily, embedding_mlp

# vLLM-Omni's fitted TeaCache polynomial for QwenImageTransformer2DModel.
QWEN_TEACACHE_COEFFICIENTS = (-450.0, 280.0, -45.0, 3.2, -0.02)


def _latent_stats(vae, like):
    import torch

    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    return mean, std


class QwenImage(ModelFamily):
    key = "qwen-image"
    title = "Qwen-Image"
    pipeline_classes = ("QwenImagePipeline",)
    guidance = GuidanceStyle("true_cfg", "true_cfg_scale")
    cfg_in_separate_calls = True
    default_steps = 50
    default_guidance = 4.0
    example_model = "Qwen-Image"
    example_sample = dict(steps=20, guidance=4.0, width=768, height=768, negative_prompt=" ")

    teacache_coefficients = QWEN_TEACACHE_COEFFICIENTS

    # ComfyUI's Qwen-Image text encoder (comfy/text_encoders/qwen_image.py) uses the pipeline's chat
    # template, drops the same system-prompt tokens (up to "<|im_start|>user\n", the pipeline's 34),
    # takes the last hidden layer after the final norm and pads nothing for one prompt.
    conditioning_refusal = None

    def embedding_kwargs(self, embedding, device, dtype):
        import torch

        mask = embedding.mask if embedding.mask is not None else torch.ones(embedding.embeds.shape[:2])
        return {"prompt_embeds": embedding.embeds.to(device, dtype), "prompt_embeds_mask": mask.to(device, torch.long)}

    # img_mod/txt_mod (dim -> 6 dim each) are a third of a block's weights.
    tensor_parallel_extras = (("transformer_blocks.*.img_mod.1", GATHERED_COLWISE),
                              ("transformer_blocks.*.txt_mod.1", GATHERED_COLWISE),
                              ("norm_out.linear", GATHERED_COLWISE),
                              *embedding_mlp("time_text_embed.timestep_embedder"))

    def block_lists(self, transformer):
        return [("transformer_blocks", transformer.transformer_blocks)]

    def teacache_modulated_input(self, block, args, kwargs):
        arguments = block_arguments(block, args, kwargs)
        shift_scale_gate = block.img_mod(arguments["temb"]).chunk(2, dim=-1)[0]
        modulated, _gate = block._modulate(block.img_norm1(arguments["hidden_states"]), shift_scale_gate,
                                           arguments.get("modulate_index"))
        return modulated

    def to_comfy_latent(self, pipe, latents, request):
        # The pipeline returns packed, normalised latents [B, seq, C*4]; ComfyUI keeps raw VAE latents.
        unpacked = pipe._unpack_latents(latents, request.height, request.width, pipe.vae_scale_factor)
        mean, std = _latent_stats(pipe.vae, unpacked)
        return (unpacked * std + mean)[:, :, 0]

    def decode(self, vae, latents):
        return vae.decode(latents.to(vae.dtype).unsqueeze(2), return_dict=False)[0][:, :, 0]

    def latent_channels(self, vae_config):
        return int(vae_config["z_dim"])

    def build_tiny(self):
        from diffusers import (
            AutoencoderKLQwenImage,
            QwenImagePipeline,
            QwenImageTransformer2DModel,
        )
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import qwen_tokenizer

        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(8, 4, 4),
        )
        vae = AutoencoderKLQwenImage(
            base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.05 * i for i in range(16)], latents_std=[1.0 + 0.1 * i for i in range(16)],
        )
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=1024, rope_theta=1000000.0,
                             rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2], "rope_type": "default"}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1]),
            vision_start_token_id=1000, vision_token_id=1001, image_token_id=1002, video_token_id=1003,
            hidden_size=32, vocab_size=1024,
        ))
        pipe = QwenImagePipeline(
            scheduler=flow_match_scheduler(dynamic=True, max_shift=0.9, max_seq_len=8192, shift_terminal=0.02),
            vae=vae, text_encoder=text_encoder.eval(), tokenizer=qwen_tokenizer(), transformer=transformer,
        )
        return pipe
