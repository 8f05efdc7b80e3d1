"""FLUX.2-klein: Flux2KleinPipeline (Qwen3 text encoder, 32-channel VAE with batch-norm stats)."""

from __future__ import annotations

from ...blocks.block_io import block_arguments
from ..base import GATHERED_COLWISE, GuidanceStyle, ModelFamily, embedding_mlp
from ..flux.family import FLUX_TEACACHE_COEFFICIENTS


class Flux2Klein(ModelFamily):
    key = "flux2-klein"
    title = "FLUX.2-klein"
    pipeline_classes = ("Flux2KleinPipeline",)
    # The pipeline builds its own empty negative prompt; it takes no negative_prompt argument.
    guidance = GuidanceStyle("cfg", "guidance_scale", takes_negative_prompt=False)
    cfg_in_separate_calls = True
    default_steps = 28
    default_guidance = 4.0
    example_model = "FLUX.2-klein-base-4B"
    example_sample = dict(steps=20, guidance=4.0, width=768, height=768)

    def has_true_cfg(self, model_index):
        return not model_index.get("is_distilled", False)  # the distilled klein checkpoints ignore guidance

    def runs_two_branches(self, pipe, request):
        return request.guidance > 1.0 and not pipe.config.is_distilled

    teacache_coefficients = FLUX_TEACACHE_COEFFICIENTS

    # ComfyUI's klein encoder (comfy/text_encoders/flux.py, KleinTokenizer) uses the chat template
    # with an empty think block that the pipeline's enable_thinking=False gives, pads to 512 tokens with
    # <|endoftext|> on the right under an attention mask, and stacks hidden layers 9, 18 and 27 as the
    # pipeline does; neither passes the mask to the transformer. Longer prompts: both keep the first 512
    # positions of a causal encoder.
    conditioning_refusal = None

    def embedding_kwargs(self, embedding, device, dtype):
        return {"prompt_embeds": embedding.embeds[:, :512].to(device, dtype)}

    # FLUX.2 computes its modulation once per call for all blocks (outside the block lists).
    fp8_shared_modulation = ("double_stream_modulation_img.linear", "double_stream_modulation_txt.linear",
                             "single_stream_modulation.linear")
    tensor_parallel_extras = (("double_stream_modulation_img.linear", GATHERED_COLWISE),
                              ("double_stream_modulation_txt.linear", GATHERED_COLWISE),
                              ("single_stream_modulation.linear", GATHERED_COLWISE),
                              ("norm_out.linear", GATHERED_COLWISE),
                              *embedding_mlp("time_guidance_embed.timestep_embedder"),
                              *embedding_mlp("time_guidance_embed.guidance_embedder"))

    def block_lists(self, transformer):
        return [("transformer_blocks", transformer.transformer_blocks),
                ("single_transformer_blocks", transformer.single_transformer_blocks)]

    def tensor_parallel_widths(self, transformer_config):
        heads = int(transformer_config["num_attention_heads"])
        inner = heads * int(transformer_config["attention_head_dim"])
        return {"attention heads": heads, "MLP width": int(inner * float(transformer_config["mlp_ratio"]))}

    def block_counts(self, transformer_config):
        return [int(transformer_config["num_layers"]), int(transformer_config["num_single_layers"])]

    def teacache_modulated_input(self, block, args, kwargs):
        from diffusers.models.transformers.transformer_flux2 import Flux2Modulation

        arguments = block_arguments(block, args, kwargs)
        (shift_msa, scale_msa, _gate), _mlp = Flux2Modulation.split(arguments["temb_mod_img"], 2)
        return (1 + scale_msa) * block.norm1(arguments["hidden_states"]) + shift_msa

    def to_comfy_latent(self, pipe, latents, request):
        return latents  # the pipeline already unpacks, de-normalises and unpatchifies

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        # Klein reads hidden states from these text-encoder layers; a checkpoint with fewer
        # layers (our tiny ones) needs the last three instead.
        layers = pipe.text_encoder.config.num_hidden_layers
        if layers < 27:
            kwargs["text_encoder_out_layers"] = tuple(range(max(1, layers - 2), layers + 1))
        return kwargs

    def build_tiny(self):
        from diffusers import (
            AutoencoderKLFlux2,
            Flux2KleinPipeline,
            Flux2Transformer2DModel,
        )
        from transformers import Qwen3ForCausalLM

        from ...tiny.parts import qwen3_config
        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import qwen_tokenizer

        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=128, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=96, timestep_guidance_channels=32, mlp_ratio=2.0,
            axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
        )
        vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=32,
                                 norm_num_groups=8)
        return Flux2KleinPipeline(
            scheduler=flow_match_scheduler(dynamic=True), vae=vae,
            text_encoder=Qwen3ForCausalLM(qwen3_config(layers=3)).eval(), tokenizer=qwen_tokenizer(),
            transformer=transformer, is_distilled=False,
        )
