"""Ovis-Image: OvisImagePipeline (FLUX-like transformer with SwiGLU MLPs, a Qwen3 text encoder).

Its pipeline takes `callback_on_step_end` but has no LoRA loader mixin (peft_lora.py mixes one in)
and its transformer no `_cp_plan` (flux_like.py writes the FLUX.1 one: the forward is the same).
Tensor parallelism is not offered: the single-stream blocks split their fused MLP projection by the
full `mlp_hidden_dim`, which a sharded projection no longer has.
"""

from __future__ import annotations

from .. import flux_like
from ..base import GuidanceStyle, ModelFamily
from ..peft_lora import with_lora_loader


class OvisImage(ModelFamily):
    key = "ovis-image"
    title = "Ovis-Image"
    pipeline_classes = ("OvisImagePipeline",)
    guidance = GuidanceStyle("cfg", "guidance_scale")
    cfg_in_separate_calls = True
    default_steps = 50
    default_guidance = 5.0
    example_model = "Ovis-Image-7B"
    example_sample = dict(steps=20, guidance=5.0, width=768, height=768)
    fp8_block_parts = ModelFamily.fp8_block_parts + ("proj_mlp", "proj_out")

    supports_tensor_parallel = False

    def pipeline_class(self, class_name):
        return with_lora_loader(super().pipeline_class(class_name))

    def tensor_parallel_plan(self, transformer):
        return None  # see the module docstring

    def block_lists(self, transformer):
        return flux_like.block_lists(transformer)

    def block_counts(self, transformer_config):
        return flux_like.block_counts(transformer_config)

    def sequence_parallel_plan(self, transformer):
        return flux_like.sequence_parallel_plan()

    def to_comfy_latent(self, pipe, latents, request):
        return flux_like.raw_vae_latents(pipe, latents, request.width, request.height)

    def build_tiny(self):
        from diffusers import OvisImagePipeline, OvisImageTransformer2DModel
        from transformers import Qwen3Model

        from ...tiny.parts import autoencoder_kl, qwen3_config
        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import qwen_tokenizer

        transformer = OvisImageTransformer2DModel(
            patch_size=1, in_channels=64, out_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
        )
        return OvisImagePipeline(
            scheduler=flow_match_scheduler(dynamic=True), vae=autoencoder_kl(0.3611, 0.1159),
            text_encoder=Qwen3Model(qwen3_config()).eval(), tokenizer=qwen_tokenizer(), transformer=transformer,
        )
