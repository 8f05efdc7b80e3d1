"""Qwen-Image-Layered (QwenImageLayeredPipeline): one RGBA image in, `layers` RGBA layers out.

Qwen-Image's transformer with two switches on (`use_layer3d_rope`: a layer index joins the frame axis
of the RoPE; `use_additional_t_cond`: a learnt "is RGB" embedding is added to the timestep embedding)
and a VAE whose encoder and decoder have four channels (RGBA). The pipeline denoises `layers + 1`
frames (frame 0 is the composite, the others the layers) beside the input image's latents, at a size it
decides itself: about `resolution`^2 pixels (640 or 1024) at the input's aspect ratio, in multiples of
32. Sample's width and height are not used.

The LATENT it returns is ComfyUI's layout for this model (core `EmptyQwenImageLayeredLatentImage`):
raw VAE latents `[B, 16, layers + 1, H/8, W/8]`, frame 0 the composite. The decode drops frame 0 as the
pipeline does and gives the layers batch-major in the pipeline's order, each as RGB plus its MASK.
"""

from __future__ import annotations

from ...files.images import rgba_pil
from ...options import Option, OptionGroup
from ..qwen_image.family import _latent_stats
from ..qwen_image_edit.family import QwenImageEdit


class LatentsFromLastStep:
    """diffusers 0.42.1 bug: with output_type="latent" the pipeline sets `image = latents` and then
    returns the unset `images` (UnboundLocalError). Its loop hands every step's latents to
    `callback_on_step_end`; we keep the last ones and take the error for the return the pipeline
    failed to make. The error is raised after the loop and after `maybe_free_model_hooks()`, so
    nothing the pipeline does is skipped; any other error, or this one before the last step, passes.
    A diffusers that returns the latents needs none of this: its own result is used."""

    def __init__(self, on_step_end, steps: int):
        self.on_step_end, self.steps, self.latents, self.done = on_step_end, steps, None, 0

    def __call__(self, pipe, index, timestep, tensors):
        result = self.on_step_end(pipe, index, timestep, tensors)
        self.latents, self.done = tensors["latents"], index + 1
        return result

    def run(self, pipe, kwargs):
        try:
            return pipe(**kwargs)[0]
        except UnboundLocalError as error:
            if "images" not in str(error) or self.latents is None or self.done != self.steps:
                raise
            return self.latents

# The input image's transparency as a ComfyUI MASK [1, H, W] (1 - alpha, core Load Image's convention;
# absent: the image's fourth channel if it has one, else opaque), how many layers to make, and the size
# bucket the pipeline works at (about resolution^2 pixels at the image's aspect).
LAYERED_OPTIONS = OptionGroup(
    key="layered", node_id="OmniLayeredOptions", title="Omni Layered Options",
    description="Qwen-Image-Layered's options for Sample: the image's transparency, how many layers, the size "
                "bucket. Connect its options output to Sample's options input.",
    options=(
        Option("mask", "MASK", "The image's transparency (connect Load Image's MASK: 1 - alpha). Without it, a "
               "4-channel image's alpha is used, else the image is opaque."),
        Option("layers", "INT", "How many RGBA layers to split the image into (VAE Decode Layers gives them as "
               "an image batch plus their masks).", default=4, low=1, high=20,
               fix="use 4 (the model card's), or 2 to 8 layers"),
        Option("resolution", "COMBO", "The size bucket: about 640x640 or 1024x1024 px at the image's aspect (640 "
               "recommended). It decides the output size: Sample's width/height are not used.", default=640,
               choices=(640, 1024), fix="use 640 (recommended by the model card) or 1024"),
    ))


class QwenImageLayered(QwenImageEdit):
    key = "qwen-image-layered"
    title = "Qwen-Image-Layered"
    pipeline_classes = ("QwenImageLayeredPipeline",)
    layered = True
    takes_output_size = False
    option_groups = (LAYERED_OPTIONS,)
    example_model = "Qwen-Image-Layered"
    # The model card's settings (true CFG 4 with a blank negative prompt, 4 layers at 640 px), with 20 steps
    # instead of its 50 to keep the shipped workflow quick; raise steps for the card's quality.
    example_sample = dict(steps=20, guidance=4.0, negative_prompt=" ")
    example_options = dict(layers=4, resolution="640")
    example_prompt = ""  # empty: the pipeline captions the image with its own text encoder
    conditioning_refusal = ("the pipeline encodes the prompt with its own layered-decomposition template (and "
                            "captions the image when the prompt is empty), which ComfyUI's text encoders do not "
                            "share")

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        kwargs.update(image=rgba_pil(request.images[0], request.options["mask"]), layers=request.options["layers"],
                      resolution=request.options["resolution"], use_en_prompt=True)
        return kwargs

    def run_pipeline(self, pipe, kwargs, steps):
        keeper = LatentsFromLastStep(kwargs["callback_on_step_end"], steps)
        return keeper.run(pipe, {**kwargs, "callback_on_step_end": keeper})

    def shape_kwargs(self, request):
        return {"num_images_per_prompt": request.batch_size}

    def output_size(self, request):
        """The pipeline's size: calculate_dimensions(resolution^2, aspect), cut to multiples of 32."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_layered import calculate_dimensions

        width, height = request.image_size
        width, height = calculate_dimensions(request.options["resolution"] ** 2, width / height)
        return width // 32 * 32, height // 32 * 32

    def to_comfy_latent(self, pipe, latents, request):
        width, height = self.output_size(request)
        unpacked = pipe._unpack_latents(latents, height, width, request.options["layers"], pipe.vae_scale_factor)
        mean, std = _latent_stats(pipe.vae, unpacked)
        return unpacked * std + mean

    def decode(self, vae, latents):
        """[B, 16, layers + 1, h, w] -> RGBA pixels in [-1, 1], [B * layers, 4, H, W] (frame 0, the
        composite, dropped as the pipeline drops it; every layer decoded as its own one-frame video)."""
        batch, channels, frames, height, width = latents.shape
        layers = latents[:, :, 1:].permute(0, 2, 1, 3, 4).reshape(batch * (frames - 1), channels, 1, height, width)
        return vae.decode(layers.to(vae.dtype), return_dict=False)[0][:, :, 0]

    def build_tiny(self):
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

        edit = super().build_tiny()
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(8, 4, 4),
            use_additional_t_cond=True, use_layer3d_rope=True,
        )
        vae = AutoencoderKLQwenImage(
            base_dim=4, z_dim=16, dim_mult=[1, 1, 2, 2, 2], num_res_blocks=1,
            temperal_downsample=[False, False, True, True], input_channels=4,
            latents_mean=[0.05 * i for i in range(16)], latents_std=[1.0 + 0.1 * i for i in range(16)],
        )
        # An empty prompt makes the pipeline caption the image with generate(max_new_tokens=512); random
        # weights never write the end token, so every id of the tiny vocabulary ends the caption: the
        # captioning path runs (one token) without 512 steps of generation.
        edit.text_encoder.generation_config.eos_token_id = list(range(edit.text_encoder.config.vocab_size))
        pipeline_class = self.pipeline_class(self.pipeline_classes[0])
        return pipeline_class(**{**edit.components, "transformer": transformer, "vae": vae})

    def tiny_request_overrides(self):
        # The size comes from `resolution` (640 at least): 2 layers keep the tiny model's sequence short.
        return {"layers": 2}
