"""Wan2.2 text-to-video: WanPipeline, including the A14B two-expert layout (transformer_2)."""

from __future__ import annotations

from ...options import VIDEO
from ..base import GATHERED_COLWISE, GuidanceStyle, ModelFamily, embedding_mlp


class Wan(ModelFamily):
    key = "wan2.2"
    title = "Wan2.2-T2V"
    pipeline_classes = ("WanPipeline",)
    transformer_components = ("transformer", "transformer_2")
    video = True
    option_groups = (VIDEO,)
    example_options = dict(frames=9)
    guidance = GuidanceStyle("cfg", "guidance_scale")
    cfg_in_separate_calls = True
    default_steps = 40
    default_guidance = 4.0
    example_model = "Wan2.2-T2V-A14B-Diffusers"
    example_sample = dict(steps=20, guidance=4.0, width=832, height=480,
                          negative_prompt="blurry, static, low quality")
    example_prompt = "a red fox running through fresh snow, cinematic tracking shot"

    # ComfyUI's UMT5 encoder (comfy/text_encoders/wan.py) gives the tokens and the end token, last layer
    # after the final norm, unpadded; the pipeline pads that with zero vectors to 512 tokens, which
    # `embedding_kwargs` does too. T5 attends both ways, so a prompt the pipeline would cut at 512
    # tokens encodes differently: refused.
    conditioning_refusal = None
    text_tokens_max = 512

    def text_embedding_width(self, transformer_config):
        return int(transformer_config["text_dim"])

    def embedding_kwargs(self, embedding, device, dtype):
        import torch

        tokens = embedding.kept()
        padded = torch.cat([tokens, tokens.new_zeros(512 - tokens.shape[0], tokens.shape[1])])
        return {"prompt_embeds": padded.unsqueeze(0).to(device, dtype)}

    def claims(self, model_index, folder=None):
        return not model_index.get("expand_timesteps")  # per-token timesteps: Wan2.2 TI2V 5B (image_to_video.py)

    def block_lists(self, transformer):
        return [("blocks", transformer.blocks)]

    fp8_shared_modulation = ("condition_embedder.time_proj",)  # every block's shift/scale/gate (dim -> 6 dim)

    def tensor_parallel_plan(self, transformer):
        plan = {}
        for attention in ("attn1", "attn2"):  # self- and cross-attention
            for projection in ("to_q", "to_k", "to_v"):
                plan[f"blocks.*.{attention}.{projection}"] = "colwise"
            plan[f"blocks.*.{attention}.to_out.0"] = "rowwise"
        plan["blocks.*.ffn.net.0.proj"] = "colwise"
        plan["blocks.*.ffn.net.2"] = "rowwise"
        # Wan modulates every block from one projection (dim -> 6 dim, per token in TI2V 5B); the blocks
        # add their own small scale_shift_table.
        plan["condition_embedder.time_proj"] = GATHERED_COLWISE
        plan.update(embedding_mlp("condition_embedder.time_embedder"))
        plan.update(embedding_mlp("condition_embedder.text_embedder"))
        plan.update(embedding_mlp("condition_embedder.image_embedder.ff", "net.0.proj", "net.2"))  # I2V A14B
        # Its output is narrow (latent channels x patch, 64 vs a 5120 hidden size): cheap to gather.
        plan["proj_out"] = GATHERED_COLWISE
        return plan

    # Besides the planned linears, tensor parallelism shards these norms: Wan normalises Q and K across
    # all heads at once, and each rank holds only its heads. Its processor reshapes by attn.heads.
    tensor_parallel_divides_heads = True
    tensor_parallel_sharded_norms = ("blocks.*.attn1.norm_q", "blocks.*.attn1.norm_k",
                                     "blocks.*.attn2.norm_q", "blocks.*.attn2.norm_k")

    def tensor_parallel_widths(self, transformer_config):
        return {"attention heads": int(transformer_config["num_attention_heads"]),
                "MLP width": int(transformer_config["ffn_dim"])}

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        kwargs["num_frames"] = request.frames
        return kwargs

    def to_comfy_latent(self, pipe, latents, request):
        import torch

        config = pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        return latents * std + mean

    def latent_channels(self, vae_config):
        return int(vae_config["z_dim"])

    def tiny_request_overrides(self):
        return {"frames": 9}

    def build_tiny(self):
        from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

        from ...tiny.parts import t5_text_encoder
        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import t5_tokenizer

        def expert():
            return WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=16,
                out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
            )

        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True],
                               latents_mean=[0.05 * i for i in range(16)],
                               latents_std=[1.0 + 0.1 * i for i in range(16)])
        return WanPipeline(
            tokenizer=t5_tokenizer(), text_encoder=t5_text_encoder(umt5=True), vae=vae,
            scheduler=flow_match_scheduler(), transformer=expert(), transformer_2=expert(), boundary_ratio=0.875,
        )
