"""Wan2.2 image-to-video: I2V A14B (WanImageToVideoPipeline, two experts, first frame and an optional
last frame) and TI2V 5B (a WanPipeline folder: text-to-video, or image-to-video from the same
components when Sample gets an image).

I2V A14B's transformer takes 36 channels: the 16 noisy latent channels, a 4-channel frame mask and the
16 channels of the VAE-encoded conditioning video (the image, zeros, and the last image if given).
TI2V 5B uses the 48-channel Wan2.2 VAE (16x downsampling, patch 2: sizes are multiples of 32) and a
transformer with per-token timesteps (`expand_timesteps`): the image becomes the first latent frame,
kept clean by a mask. Neither uses a CLIP image encoder (image_encoder/image_processor are None).
"""

from __future__ import annotations

from ...files.images import one_pil
from .family import Wan


class WanI2V(Wan):
    key = "wan2.2-i2v"
    title = "Wan2.2-I2V"
    pipeline_classes = ("WanImageToVideoPipeline",)
    image_inputs = 1
    requires_image = True
    takes_last_image = True
    example_model = "Wan2.2-I2V-A14B-Diffusers"
    example_sample = dict(steps=20, guidance=3.5, width=832, height=480,
                          negative_prompt="blurry, static, low quality")
    example_prompt = "the scene comes alive, gentle camera push-in, natural motion"

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        kwargs["image"] = one_pil(request.images[0])
        if request.options.get("last_image") is not None:
            kwargs["last_image"] = one_pil(request.options["last_image"])
        return kwargs

    def build_tiny(self):
        from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

        base = super().build_tiny()

        def expert():
            return WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=36,
                out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
            )

        return WanImageToVideoPipeline(
            tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
            image_processor=None, image_encoder=None, transformer=expert(), transformer_2=expert(),
            boundary_ratio=0.875,
        )


def ti2v_pipeline_class():
    """WanPipeline that turns into WanImageToVideoPipeline (same components) when given an image."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    class WanTI2VPipeline(WanPipeline):
        def image_to_video(self) -> WanImageToVideoPipeline:
            parts = {name: getattr(self, name) for name in
                     ("tokenizer", "text_encoder", "vae", "scheduler", "transformer", "transformer_2")}
            pipe = WanImageToVideoPipeline(**parts, image_processor=None, image_encoder=None,
                                           boundary_ratio=self.config.boundary_ratio,
                                           expand_timesteps=self.config.expand_timesteps)
            pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
            return pipe

        def __call__(self, *args, image=None, last_image=None, **kwargs):
            if image is None:
                return super().__call__(*args, **kwargs)
            return self.image_to_video()(*args, image=image, last_image=last_image, **kwargs)

    return WanTI2VPipeline


class WanTI2V(Wan):
    key = "wan2.2-ti2v"
    title = "Wan2.2-TI2V"
    pipeline_classes = ("WanPipeline",)
    image_inputs = 1
    requires_image = False
    pixel_multiple = 32  # 16x VAE x patch 2 (diffusers would silently round other sizes down)
    default_steps = 50
    default_guidance = 5.0
    example_model = "Wan2.2-TI2V-5B-Diffusers"
    example_sample = dict(steps=30, guidance=5.0, width=832, height=480,
                          negative_prompt="blurry, static, low quality")
    example_prompt = "a red fox running through fresh snow, cinematic tracking shot"

    @staticmethod
    def claims(model_index: dict, folder=None) -> bool:
        """A TI2V folder names WanPipeline like T2V: its config tells them apart (per-token timesteps)."""
        return bool(model_index.get("expand_timesteps"))

    def pipeline_class(self, class_name):
        if class_name == "WanPipeline":
            return ti2v_pipeline_class()
        return super().pipeline_class(class_name)

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        if request.images:
            kwargs["image"] = one_pil(request.images[0])
        return kwargs

    def tiny_request_overrides(self):
        return {"frames": 9, "width": 64, "height": 64}

    def build_tiny(self):
        from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

        base = super().build_tiny()
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=48,
            out_channels=48, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
        )
        vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, in_channels=12, out_channels=12,
                               dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                               patch_size=2, scale_factor_spatial=16, is_residual=True,
                               latents_mean=[0.02 * i for i in range(48)],
                               latents_std=[1.0 + 0.05 * i for i in range(48)])
        return WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=vae,
                           scheduler=base.scheduler, transformer=transformer, transformer_2=None,
                           boundary_ratio=None, expand_timesteps=True)
