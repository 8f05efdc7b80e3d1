"""GLM-Image: GlmImagePipeline, an autoregressive stage and a DiT stage.

1. The vision-language model (`GlmImageForConditionalGeneration`, transformers) reads the prompt, and
   the reference images when editing, and generates "prior" image tokens: a 16x16 preview grid, then
   one token per 32x32 px of the output, codes of its VQ codebook (its output head covers the
   codebook only). The pipeline upsamples them to the DiT's 16 px grid.
2. The DiT (`GlmImageTransformer2DModel`) denoises the latents conditioned on those tokens and on a
   ByT5 (T5 encoder) embedding of the prompt's quoted text (glyphs); the negative branch drops the
   prior tokens and encodes an empty text. Reference images pass through the DiT once at timestep 0
   to fill a key/value cache that every step reads.

What the pack adds around the pipeline (never a copy of its loop):
- Progress and Cancel cover both stages: a forward hook on the AR model counts its generated tokens
  (sampling.py `prior_stage`), before the DiT's steps.
- CFG-parallel: the pipeline enters no `cache_context` per branch, so the branch of a call is read
  from its inputs (the negative one drops every prior token), and the deferred positive call runs
  with the KV-cache mode it was made with (`cfg_branch`, `cfg_deferred_call`).
- LoRA through peft (the pipeline has no LoRA loader mixin).
- Cache-DiT (cache-dit's own GLM-Image adapter) for text-to-image; refused with reference images
  (`cache_dit_refusal`).
- Refused with the reason: sequence and tensor parallelism (diffusers gives the transformer neither
  plan, and the reference images' KV cache would need splitting too), TeaCache (no coefficients for
  this DiT), CONDITIONING (no ComfyUI encoder makes the prior tokens).
"""

from __future__ import annotations

import contextlib

from ...files.images import to_pil
from ...options import REFERENCE_IMAGES
from ..base import GuidanceStyle, ModelFamily
from ..peft_lora import with_lora_loader

# The AR stage's prompt: the chat template the processor applies (images become <|image|> runs
# between begin/end-of-image tokens; the processor appends the target grid and a begin-of-image).
CHAT_TEMPLATE = ("{% for message in messages %}{% for item in message['content'] %}"
                 "{% if item['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
                 "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endfor %}")


class GlmImage(ModelFamily):
    key = "glm-image"
    title = "GLM-Image"
    pipeline_classes = ("GlmImagePipeline",)
    # The pipeline takes no negative prompt: its negative branch is the empty text without prior tokens.
    guidance = GuidanceStyle("cfg", "guidance_scale", takes_negative_prompt=False)
    cfg_in_separate_calls = True
    pixel_multiple = 32  # one prior token per 32x32 px
    default_steps = 50
    default_guidance = 1.5
    image_inputs = 3  # optional reference images: edit / subject-driven generation
    option_groups = (REFERENCE_IMAGES,)
    example_model = "GLM-Image"
    example_sample = dict(steps=50, guidance=1.5, width=1024, height=1024)
    example_prompt = 'a poster of a cat on a windowsill at sunset, with the title "Good evening"'
    conditioning_refusal = ("its prompt reaches the model as autoregressive prior image tokens and a ByT5 "
                            "encoding of the quoted text, which no ComfyUI text encoder makes")
    supports_sequence_parallel = False
    supports_tensor_parallel = False

    def pipeline_class(self, class_name):
        return with_lora_loader(_pipeline_class())

    def sequence_parallel_plan(self, transformer):
        return None

    def tensor_parallel_plan(self, transformer):
        return None

    def block_lists(self, transformer):
        return [("transformer_blocks", transformer.transformer_blocks)]

    def text_embedding_width(self, transformer_config):
        return int(transformer_config["text_embed_dim"])

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        if request.images:
            kwargs["image"] = reference_images(request.images)
        return kwargs

    def to_comfy_latent(self, pipe, latents, request):
        # The pipeline returns normalised latents; ComfyUI keeps raw VAE latents.
        import torch

        config = pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        return latents * std + mean

    def cache_dit_refusal(self, request):
        if request.images:
            # cache-dit tells the positive from the negative call by counting calls; the reference
            # images' cache-filling calls before the first step shift that count, so it would reuse one
            # branch's residuals for the other.
            return ("with reference images, cache-dit would count their cache-filling pass as a step and mix up "
                    "the positive and negative branches")
        return None

    # ---- the autoregressive stage ------------------------------------------------------------
    def prior_stage(self, pipe):
        """The module whose forward calls make the first stage (one per generated token)."""
        return pipe.vision_language_encoder

    def prior_stage_calls(self, request) -> int:
        """Tokens the AR model generates (as the pipeline's `_compute_generation_params`): the output grid
        (one per 32 px) and, for text-to-image, the 16x16-ish preview grid first; plus the end token."""
        import math

        rows, columns = request.height // 32, request.width // 32
        tokens = rows * columns
        if not request.images:
            ratio = rows / columns
            tokens += int(math.sqrt(ratio) * 16) * int(math.sqrt(1 / ratio) * 16)
        return tokens + 1

    # ---- CFG-parallel --------------------------------------------------------------------------
    def cfg_branch(self, kwargs) -> str | None:
        """"cond" / "uncond" for a denoising call, None for the reference images' cache-filling calls."""
        drop, caches = kwargs.get("prior_token_drop"), kwargs.get("kv_caches")
        if drop is None or (caches is not None and caches[0].mode == "write"):
            return None
        return "uncond" if bool(drop.all()) else "cond"

    def cfg_deferred_call(self, kwargs):
        """What a positive call deferred by CFG-parallel needs when it runs later: the KV-cache mode it
        was made with (the pipeline switches the cache to "skip" before the negative call)."""
        caches = kwargs.get("kv_caches")
        mode = caches[0].mode if caches is not None else None

        @contextlib.contextmanager
        def restored():
            if caches is None:
                yield
                return
            later = caches[0].mode
            caches.set_mode(mode)
            try:
                yield
            finally:
                caches.set_mode(later)

        return restored

    # ---- tests -------------------------------------------------------------------------------
    def build_tiny(self):
        import torch
        from diffusers import AutoencoderKL, GlmImageTransformer2DModel
        from transformers import (ByT5Tokenizer, GlmImageConfig, GlmImageForConditionalGeneration, GlmImageProcessor,
                                  T5Config, T5EncoderModel)
        from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

        from ...tiny.schedulers import flow_match_scheduler
        from ...tiny.tokenizers import glm_image_tokenizer

        codes = 128  # the VQ codebook = the AR model's output head = the DiT's prior-token embedding
        tokenizer = glm_image_tokenizer(CHAT_TEMPLATE)
        image_token, begin, end = tokenizer.convert_tokens_to_ids(["<|image|>", "<|begin_of_image|>", "<|end_of_image|>"])
        config = GlmImageConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                             vision_vocab_size=codes, rope_parameters={"mrope_section": (4, 2, 2)},
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=end),
            vision_config=dict(depth=2, hidden_size=32, num_heads=2, image_size=64, patch_size=16,
                               intermediate_size=32),
            vq_config=dict(embed_dim=32, num_embeddings=codes, latent_channels=32),
            image_token_id=image_token, image_start_token_id=begin, image_end_token_id=end)
        # The end-of-image token lies outside the codebook the output head covers, so the random model
        # always generates the whole grid (the trained model ends it on time).
        vision_language_encoder = GlmImageForConditionalGeneration(config).eval()
        # The processor halves a reference image before cutting 16 px patches: one token per 32 px.
        image_processor = GlmImageImageProcessorPil(patch_size=16, temporal_patch_size=1, merge_size=1,
                                                    min_pixels=32 * 32, max_pixels=2048 * 2048)
        processor = GlmImageProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
        glyph_tokenizer = ByT5Tokenizer()  # byte-level: no vocabulary file
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(glyph_tokenizer), d_model=32, d_kv=8, d_ff=64,
                                               num_layers=2, num_heads=4)).eval()
        transformer = GlmImageTransformer2DModel(
            patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
            text_embed_dim=32, time_embed_dim=64, condition_dim=16, prior_vq_quantizer_codebook_size=codes)
        torch.manual_seed(1)
        vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            latent_channels=4, norm_num_groups=4, sample_size=64,
                            latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.2, 0.9, 1.1, 1.0]).eval()
        return _pipeline_class()(tokenizer=glyph_tokenizer, processor=processor, text_encoder=text_encoder,
                                 vision_language_encoder=vision_language_encoder, vae=vae, transformer=transformer,
                                 scheduler=flow_match_scheduler(dynamic=True))

    def tiny_request_overrides(self):
        return dict(width=64, height=64)


def reference_images(images) -> list:
    """Sample's reference images as the pipeline takes them, all at the first one's size: the pipeline
    concatenates their vision features, which only works for equal grids."""
    first = to_pil(images[0])[0]
    pictures = [first] + [to_pil(image)[0] for image in images[1:]]
    return [picture if picture.size == first.size else picture.resize(first.size) for picture in pictures]


def _pipeline_class():
    from diffusers import GlmImagePipeline

    return _with_matching_image_tokens(GlmImagePipeline)


_CLASSES: dict = {}


def _with_matching_image_tokens(pipeline_class):
    """The pipeline, with the AR model's `get_image_tokens` taking what the pipeline passes it.

    diffusers 0.42 concatenates the reference images' vision features (`torch.cat(pooler_output)`) and
    hands the result to `get_image_tokens`; transformers 5 returns those features as one [C, h, w] map
    per image and tokenizes a list of such maps, so the concatenation arrives as one [n*C, h, w] map.
    Splitting it back into the n maps restores what transformers expects, and leaves the pipeline's
    own code untouched (the model's own forward calls its inner model's method, not this one).
    """
    if pipeline_class in _CLASSES:
        return _CLASSES[pipeline_class]

    class GlmImagePipeline(pipeline_class):
        # Not __init__: diffusers reads the pipeline's components from its __init__ signature.
        def register_modules(self, **kwargs):
            super().register_modules(**kwargs)
            model = kwargs.get("vision_language_encoder")
            if model is not None and not getattr(model, "_omni_splits_image_maps", False):
                model.get_image_tokens = _split_image_maps(model.get_image_tokens,
                                                           model.model.vqmodel.quant_conv.in_channels)
                model._omni_splits_image_maps = True

    GlmImagePipeline.__qualname__ = pipeline_class.__qualname__
    _CLASSES[pipeline_class] = GlmImagePipeline
    return GlmImagePipeline


def _split_image_maps(get_image_tokens, width: int):
    import torch

    def split(hidden_states, image_grid_thw=None):
        if isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 3:
            hidden_states = list(hidden_states.split(width, dim=0))
        return get_image_tokens(hidden_states, image_grid_thw)

    return split

