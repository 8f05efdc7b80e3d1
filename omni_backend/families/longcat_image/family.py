"""LongCat-Image (LongCatImagePipeline) and LongCat-Image-Edit (LongCatImageEditPipeline, one image to
edit), on one FLUX-like transformer with a Qwen2.5-VL text encoder.

What the pipelines lack and where it comes from instead:
- no `callback_on_step_end`: step ends are counted from the transformer's calls (sampling.py);
- no `_cp_plan` / `_tp_plan`: flux_like.py writes them;
- no LoRA loader mixin: peft_lora.py mixes one in.
LongCat-Image rewrites the prompt with its VL model by default (`enable_prompt_rewrite`); here that
is the request's `prompt_rewrite`, off unless asked. Its CFG renorm options pass through.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import OmniInputError
from ...files.images import one_pil
from .. import flux_like
from ...options import Option, OptionGroup
from ..base import GATHERED_COLWISE, GuidanceStyle, ModelFamily, embedding_mlp
from ..peft_lora import with_lora_loader
from ..qwen_vl_processor import image_only_processor, load_processor, torchvision_available

# vLLM-Omni's fitted TeaCache polynomial for LongCatImageTransformer2DModel (highest order first).
LONGCAT_TEACACHE_COEFFICIENTS = (652.5980, -424.1615, 84.5526, -4.5923, 0.1694)
MLP_RATIO = 4  # LongCat's single-stream blocks: proj_mlp is 4x the model width
EDIT_AREA = 1024 * 1024  # LongCat-Image-Edit's output area, at the input image's aspect ratio
PROCESSOR = "text_processor"  # the pipelines' Qwen2-VL processor component

# Rewriting the prompt with its vision-language model first is a second model run that changes the
# prompt, so it is off unless asked; CFG renormalisation keeps diffusers' defaults (on, clamped to
# [cfg_renorm_min, 1]).
LONGCAT_OPTIONS = OptionGroup(
    key="longcat", node_id="OmniLongCatOptions", title="Omni LongCat-Image Options",
    description="LongCat-Image's own options for Sample: prompt rewriting and CFG renormalisation. Connect its "
                "options output to Sample's options input.",
    options=(
        Option("prompt_rewrite", "BOOLEAN", "Let LongCat-Image's vision-language model rewrite the prompt first (a "
               "second model run; the prompt used is shown below Sample).", default=False),
        Option("cfg_renorm", "BOOLEAN", "Rescale the guided prediction to the norm of the conditional one "
               "(diffusers' default: on).", default=True),
        Option("cfg_renorm_min", "FLOAT", "The lowest renorm scale (0 widest range, 1 turns renorm off).",
               default=0.0, low=0.0, high=1.0, step=0.05, fix="use 0.0 (widest renorm range) up to 1.0 (renorm off)"),
    ))


class LongCatImage(ModelFamily):
    key = "longcat-image"
    title = "LongCat-Image"
    pipeline_classes = ("LongCatImagePipeline",)
    guidance = GuidanceStyle("cfg", "guidance_scale")
    cfg_in_separate_calls = True
    option_groups = (LONGCAT_OPTIONS,)
    default_steps = 50
    default_guidance = 4.5
    example_model = "LongCat-Image"
    example_sample = dict(steps=20, guidance=4.5, width=768, height=768)
    fp8_block_parts = ModelFamily.fp8_block_parts + ("proj_mlp", "proj_out")

    teacache_coefficients = LONGCAT_TEACACHE_COEFFICIENTS
    tensor_parallel_divides_heads = True  # its attention processor unflattens by attn.heads

    def pipeline_class(self, class_name):
        return with_lora_loader(super().pipeline_class(class_name))

    def load_kwargs(self, folder) -> dict:
        if torchvision_available():
            return {}  # transformers builds the folder's own processor
        return {PROCESSOR: load_processor(Path(folder.path) / PROCESSOR)}

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        kwargs.update(enable_cfg_renorm=request.options["cfg_renorm"], cfg_renorm_min=request.options["cfg_renorm_min"],
                      enable_prompt_rewrite=False)
        if request.options["prompt_rewrite"] and "lm_head.weight" in getattr(pipe.text_encoder, "_omni_stood_in", ()):
            # ComfyUI's Qwen2.5-VL files leave out the output head (its text is never generated there);
            # the loader stood the embedding in for it, which encodes right but would generate nonsense.
            raise OmniInputError("prompt_rewrite", True, "the text encoder was loaded from a ComfyUI file without "
                                 "the language-model output head the rewrite generates text with",
                                 "turn prompt_rewrite off, or load LongCat from its diffusers folder")
        if request.options["prompt_rewrite"]:
            # The pipeline's own rewrite (its VL model's generate), run here rather than inside the call
            # so that the prompt it wrote can be reported; the call then gets that prompt as is.
            kwargs["prompt"] = pipe.rewire_prompt(request.prompt, pipe._execution_device)[0]
        return kwargs

    # ---- structure -------------------------------------------------------------------------------
    def block_lists(self, transformer):
        return flux_like.block_lists(transformer)

    def block_counts(self, transformer_config):
        return flux_like.block_counts(transformer_config)

    def teacache_modulated_input(self, block, args, kwargs):
        return flux_like.teacache_modulated_input(block, args, kwargs)

    def sequence_parallel_plan(self, transformer):
        return flux_like.sequence_parallel_plan()

    # As FLUX.1's (same module names): the AdaLN-Zero linears, the final AdaLN and the timestep MLP.
    tensor_parallel_extras = (("transformer_blocks.*.norm1.linear", GATHERED_COLWISE),
                              ("transformer_blocks.*.norm1_context.linear", GATHERED_COLWISE),
                              ("single_transformer_blocks.*.norm.linear", GATHERED_COLWISE),
                              ("norm_out.linear", GATHERED_COLWISE),
                              *embedding_mlp("time_embed.timestep_embedder"))

    def tensor_parallel_plan(self, transformer):
        return {**flux_like.tensor_parallel_plan(MLP_RATIO), **dict(self.tensor_parallel_extras)}

    def tensor_parallel_widths(self, transformer_config):
        return flux_like.tensor_parallel_widths(transformer_config, MLP_RATIO)

    def to_comfy_latent(self, pipe, latents, request):
        return flux_like.raw_vae_latents(pipe, latents, *self.output_size(request))

    # ---- tiny copies -----------------------------------------------------------------------------
    def build_tiny(self):
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, LongCatImageTransformer2DModel
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

        from ...tiny.parts import autoencoder_kl
        from ...tiny.tokenizers import qwen_tokenizer

        tokenizer = qwen_tokenizer()
        tokenizer.add_special_tokens({"additional_special_tokens": [
            "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
        token = tokenizer.convert_tokens_to_ids
        transformer = LongCatImageTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
        )
        torch.manual_seed(1)
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=len(tokenizer), rope_theta=1000000.0,
                             rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2], "rope_type": "default"}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1]),
            vision_start_token_id=token("<|vision_start|>"), image_token_id=token("<|image_pad|>"),
            video_token_id=token("<|video_pad|>"), hidden_size=32, vocab_size=len(tokenizer),
        )).eval()
        # The pipeline's prompt rewrite generates up to 512 tokens and a random model never picks its end
        # token: the tiny copy ends at its first token (any token ends it), so a rewrite costs one step.
        text_encoder.generation_config.eos_token_id = list(range(len(tokenizer)))
        image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 64, patch_size=14,
                                                merge_size=2, temporal_patch_size=2)
        processor = image_only_processor(image_processor, tokenizer, tokenizer.chat_template)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        pipeline_class = ModelFamily.pipeline_class(self, self.pipeline_classes[0])  # saved as diffusers' own
        return pipeline_class(scheduler=scheduler, vae=autoencoder_kl(0.3611, 0.1159), text_encoder=text_encoder,
                              tokenizer=tokenizer, text_processor=processor, transformer=transformer)

    def make_tiny(self, directory):
        """save_pretrained cannot write a processor without its video part: write its two halves."""
        import torch

        torch.manual_seed(0)
        pipe = self.build_tiny()
        directory = Path(directory)
        processor = pipe.text_processor
        pipe.register_modules(text_processor=None)
        pipe.save_pretrained(directory, safe_serialization=True)
        processor.image_processor.save_pretrained(directory / PROCESSOR)
        processor.tokenizer.save_pretrained(directory / PROCESSOR)
        index = directory / "model_index.json"
        model_index = json.loads(index.read_text())
        model_index[PROCESSOR] = ["transformers", "Qwen2VLProcessor"]
        index.write_text(json.dumps(model_index, indent=2))
        return directory


class LongCatImageEdit(LongCatImage):
    """One image to edit; the pipeline makes an image of about 1 MP at the input's aspect ratio (its
    width and height rounded up to multiples of 16), whatever Sample's width and height say."""

    key = "longcat-image-edit"
    title = "LongCat-Image-Edit"
    pipeline_classes = ("LongCatImageEditPipeline",)
    image_inputs = 1
    requires_image = True
    option_groups = ()  # the edit pipeline has no prompt rewrite and no CFG renorm
    takes_output_size = False
    example_model = "LongCat-Image-Edit"
    example_sample = dict(steps=20, guidance=4.5, width=1024, height=1024)
    example_prompt = "make the sky a warm sunset orange"

    def call_kwargs(self, pipe, request):
        kwargs = ModelFamily.call_kwargs(self, pipe, request)
        kwargs["image"] = one_pil(request.images[0])
        return kwargs

    def build_tiny(self):
        """LongCat-Image's tiny parts with a VAE that downsamples 16x instead of 8x: the edit pipeline
        always works at about 1 MP (plus as many tokens again for the input image), which an 8x VAE
        would make a sequence of ~9000 tokens, seconds per transformer call even for a tiny model."""
        from diffusers import AutoencoderKL

        pipe = super().build_tiny()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 5,
            up_block_types=["UpDecoderBlock2D"] * 5, block_out_channels=[8, 8, 16, 16, 16], layers_per_block=1,
            latent_channels=16, norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False,
        )
        return type(pipe)(**{**pipe.components, "vae": vae})

    def output_size(self, request):
        """diffusers' calculate_dimensions(1024 * 1024, width / height) for the input image."""
        from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import calculate_dimensions

        width, height = request.image_size
        return calculate_dimensions(EDIT_AREA, width * 1.0 / height)
