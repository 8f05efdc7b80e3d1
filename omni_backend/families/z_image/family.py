"""Z-Image (Z-Image-Turbo): ZImagePipeline."""

from __future__ import annotations

from ...blocks.block_io import block_arguments
from ..base import GATHERED_COLWISE, GuidanceStyle, ModelFamily, embedding_mlp
from ..qwen_image.family import QWEN_TEACACHE_COEFFICIENTS


class ZImage(ModelFamily):
    key = "z-image"
    title = "Z-Image"
    pipeline_classes = ("ZImagePipeline",)
    guidance = GuidanceStyle("cfg", "guidance_scale")
    default_steps = 8
    default_guidance = 0.0
    example_model = "Z-Image-Turbo"
    example_sample = dict(steps=8, guidance=0.0, width=768, height=768)

    # vLLM-Omni uses the Qwen-Image polynomial for Z-Image (no fit of its own was published).
    teacache_coefficients = QWEN_TEACACHE_COEFFICIENTS

    # ComfyUI's Z-Image encoder (comfy/text_encoders/z_image.py) wraps the prompt in the template the
    # pipeline's Qwen3 chat template gives ("<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n"),
    # drops nothing, reads the second-to-last hidden layer without the final norm, and pads nothing;
    # the pipeline keeps the unpadded tokens of its first 512 (a causal encoder: the same first tokens).
    conditioning_refusal = None

    def text_embedding_width(self, transformer_config):
        return int(transformer_config["cap_feat_dim"])

    def embedding_kwargs(self, embedding, device, dtype):
        return {"prompt_embeds": [embedding.kept()[:512].to(device, dtype)]}

    def block_lists(self, transformer):
        # noise_refiner and context_refiner run once per call before the main stack.
        return [("layers", transformer.layers)]

    def sequence_parallel_plan(self, transformer):
        """diffusers has no `_cp_plan` for Z-Image: split the unified (image + caption) sequence entering
        the main layers, with its mask and rotary frequencies, and gather it after the final layer."""
        from diffusers.models._modeling_parallel import (
            ContextParallelInput,
            ContextParallelOutput,
        )

        split = {
            "layers.0": {"x": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
            "layers.*": {
                "attn_mask": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False),
                "freqs_cis": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            },
        }
        gather = {f"all_final_layer.{key}": ContextParallelOutput(gather_dim=1, expected_dims=3)
                  for key in transformer.all_final_layer}
        return {**split, **gather}

    tensor_parallel_divides_heads = True  # its attention processor reshapes by attn.heads

    def tensor_parallel_plan(self, transformer):
        plan = {}
        for stack in ("layers", "noise_refiner", "context_refiner"):
            for projection in ("to_q", "to_k", "to_v"):
                plan[f"{stack}.*.attention.{projection}"] = "colwise"
            plan[f"{stack}.*.attention.to_out.0"] = "rowwise"
            plan[f"{stack}.*.feed_forward.w1"] = "colwise"  # SwiGLU: w2(silu(w1 x) * w3 x)
            plan[f"{stack}.*.feed_forward.w3"] = "colwise"
            plan[f"{stack}.*.feed_forward.w2"] = "rowwise"
            plan[f"{stack}.*.adaLN_modulation.0"] = GATHERED_COLWISE  # context_refiner has none
        plan["all_final_layer.*.adaLN_modulation.1"] = GATHERED_COLWISE
        # The timestep MLP (256 -> 1024 -> dim) is most of a small Z-Image's weights.
        plan.update(embedding_mlp("t_embedder.mlp", "0", "2"))
        return plan

    def tensor_parallel_widths(self, transformer_config):
        dim = int(transformer_config["dim"])
        return {"attention heads": int(transformer_config["n_heads"]), "MLP width": int(dim / 3 * 8)}

    def block_counts(self, transformer_config):
        return [int(transformer_config["n_layers"])]

    def teacache_modulated_input(self, block, args, kwargs):
        arguments = block_arguments(block, args, kwargs)
        scale_msa = block.adaLN_modulation(arguments["adaln_input"]).unsqueeze(1).chunk(4, dim=2)[0]
        return block.attention_norm1(arguments["x"]) * (1.0 + scale_msa)

    def attention_heads(self, transformer_config):
        return int(transformer_config["n_heads"])

    def to_comfy_latent(self, pipe, latents, request):
        config = pipe.vae.config
        return latents / config.scaling_factor + config.shift_factor

    def build_tiny(self):
        from diffusers import ZImagePipeline, ZImageTransformer2DModel
        from transformers import Qwen3Model

        from ...tiny.parts import autoencoder_kl, qwen3_config
        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import qwen_tokenizer

        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
            n_heads=4, n_kv_heads=4, cap_feat_dim=32, axes_dims=[8, 4, 4], axes_lens=[1024, 512, 512],
        )
        return ZImagePipeline(
            scheduler=flow_match_scheduler(), vae=autoencoder_kl(0.3611, 0.1159),
            text_encoder=Qwen3Model(qwen3_config()).eval(), tokenizer=qwen_tokenizer(), transformer=transformer,
        )
