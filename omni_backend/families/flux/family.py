"""FLUX.1-dev: FluxPipeline (guidance-distilled: guidance is an embedding, one call per step)."""

from __future__ import annotations

from ...blocks.block_io import block_arguments
from .. import flux_like
from ..base import GATHERED_COLWISE, GuidanceStyle, ModelFamily, embedding_mlp

# vLLM-Omni's fitted TeaCache polynomial for FluxTransformer2DModel (also used for FLUX.2-klein).
FLUX_TEACACHE_COEFFICIENTS = (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861)


class Flux(ModelFamily):
    key = "flux"
    title = "FLUX.1-dev"
    pipeline_classes = ("FluxPipeline",)
    guidance = GuidanceStyle("distilled", "guidance_scale", takes_negative_prompt=False)
    default_steps = 28
    default_guidance = 3.5
    example_model = "FLUX.1-dev"
    example_sample = dict(steps=20, guidance=3.5, width=768, height=768)
    # Single-stream blocks: proj_mlp is the MLP's input, proj_out the fused attention+MLP output.
    fp8_block_parts = ModelFamily.fp8_block_parts + ("proj_mlp", "proj_out")

    teacache_coefficients = FLUX_TEACACHE_COEFFICIENTS

    # ComfyUI pads the T5 prompt to 256 tokens (comfy/text_encoders/flux.py, min_length=256), the
    # pipeline to 512; FLUX attends to the padding without a mask, so every embedding differs.
    conditioning_refusal = ("ComfyUI pads the T5 prompt to 256 tokens and the pipeline to 512; FLUX attends to "
                            "the padding without a mask, so the embeddings differ")

    # The AdaLN-Zero linears (dim -> 6 dim, single blocks dim -> 3 dim) and the embedding MLPs.
    tensor_parallel_extras = (("transformer_blocks.*.norm1.linear", GATHERED_COLWISE),
                              ("transformer_blocks.*.norm1_context.linear", GATHERED_COLWISE),
                              ("single_transformer_blocks.*.norm.linear", GATHERED_COLWISE),
                              ("norm_out.linear", GATHERED_COLWISE),
                              *embedding_mlp("time_text_embed.timestep_embedder"),
                              *embedding_mlp("time_text_embed.guidance_embedder"),
                              *embedding_mlp("time_text_embed.text_embedder"))

    def block_lists(self, transformer):
        return [("transformer_blocks", transformer.transformer_blocks),
                ("single_transformer_blocks", transformer.single_transformer_blocks)]

    def block_counts(self, transformer_config):
        return [int(transformer_config["num_layers"]), int(transformer_config["num_single_layers"])]

    def teacache_modulated_input(self, block, args, kwargs):
        arguments = block_arguments(block, args, kwargs)
        modulated, *_gates = block.norm1(arguments["hidden_states"], emb=arguments["temb"])
        return modulated

    def to_comfy_latent(self, pipe, latents, request):
        return flux_like.raw_vae_latents(pipe, latents, request.width, request.height)

    def build_tiny(self):
        from diffusers import FluxPipeline, FluxTransformer2DModel

        from ...tiny.parts import autoencoder_kl, clip_text_encoder, t5_text_encoder
        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import clip_tokenizer, t5_tokenizer

        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        return FluxPipeline(
            scheduler=flow_match_scheduler(dynamic=True), vae=autoencoder_kl(0.3611, 0.1159),
            text_encoder=clip_text_encoder(), tokenizer=clip_tokenizer(),
            text_encoder_2=t5_text_encoder(), tokenizer_2=t5_tokenizer(), transformer=transformer,
        )
