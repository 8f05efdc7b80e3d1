"""Load Omni Model (ComfyUI files): the DiT, text encoder and VAE as the single files ComfyUI users hold."""

from __future__ import annotations

from omni_backend.single_file.model_files import AUTO, PROFILES, ModelFiles, detect_family, inspect_model_files
from omni_backend.single_file.weights_file import inspect_weights_file
from omni_backend.spec import ModelSpec
from omni_backend.system.devices import DTYPE_CHOICES

from . import comfy_bridge
from .common import CATEGORY, OMNI_MODEL, as_verdict
from .load_model import device_input

SUFFIXES = (".safetensors", ".sft")
# The model folders each input reads, as ComfyUI names them (folder_paths keys).
FOLDERS = {"diffusion_model": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae",
           "diffusion_model_2": "diffusion_models", "text_encoder_2": "text_encoders", "text_encoder_3": "text_encoders"}
# Checkpoints that bundle the DiT and its VAE (Stability's sd3.5_medium.safetensors) sit in checkpoints/;
# the diffusion model and VAE inputs list those too and read their part of the file.
BUNDLE_FOLDER = "checkpoints"
BUNDLE_INPUTS = ("diffusion_model", "vae")
NONE = "none"  # an optional file input left empty


def file_choices(input_name: str) -> list[str]:
    names = comfy_bridge.list_files(FOLDERS[input_name], SUFFIXES)
    if input_name in BUNDLE_INPUTS:
        names += [name for name in comfy_bridge.list_files(BUNDLE_FOLDER, SUFFIXES) if name not in names]
    return names


def resolve_file(input_name: str, value: str):
    """The file in the input's folder, else (for the bundle inputs) in checkpoints/."""
    from omni_backend.errors import OmniInputError

    try:
        return comfy_bridge.resolve_in_roots(FOLDERS[input_name], value, input_name)
    except OmniInputError as not_there:
        if input_name not in BUNDLE_INPUTS:
            raise
        first = not_there  # the input's own folder's message names where it should be
    try:
        return comfy_bridge.resolve_in_roots(BUNDLE_FOLDER, value, input_name)
    except OmniInputError:
        raise first from None


class OmniLoadModelFiles:
    DESCRIPTION = ("Build an Omni model from the single files ComfyUI's templates download: the diffusion model "
                   "from models/diffusion_models, its text encoder from models/text_encoders and its VAE from "
                   "models/vae. The family and its config are read from the files; weights load when Sample "
                   "first needs them. bf16, fp16, fp8_e4m3fn and ComfyUI's fp8_scaled files are read.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (OMNI_MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "diffusion_model": (file_choices("diffusion_model"), {
                "tooltip": "The DiT, e.g. qwen_image_fp8_e4m3fn.safetensors or flux1-dev.safetensors "
                           "(models/diffusion_models), or a checkpoint bundling DiT and VAE such as "
                           "sd3.5_medium.safetensors (models/checkpoints). Its family is detected from its tensors."}),
            "text_encoder": ([*file_choices("text_encoder"), NONE], {
                "tooltip": "The family's (first) text encoder, e.g. qwen_2.5_vl_7b_fp8_scaled.safetensors, "
                           "qwen_3_4b.safetensors (Z-Image) or clip_l.safetensors (FLUX.1, SD3.5) "
                           "(models/text_encoders); its tokenizer comes from ComfyUI's comfy/ folder. none: no "
                           "text encoder loads and Sample takes the prompt as CONDITIONING from ComfyUI's own text "
                           "encoder (Qwen-Image, Z-Image, FLUX.2-klein, Wan2.2)."}),
            "vae": (file_choices("vae"), {"tooltip": "The family's VAE, e.g. qwen_image_vae.safetensors or ae.safetensors "
                                                     "(models/vae), or the checkpoint that bundles it (SD3.5)."}),
            "dtype": (list(DTYPE_CHOICES), {"default": "auto",
                                           "tooltip": "Compute dtype: auto = bf16 on GPUs that support it, fp32 on "
                                                      "the CPU. FP8 files stay FP8 in memory (their layer "
                                                      "linears are upcast to it one layer at a time as they run)."}),
            "device": device_input(),
        }, "optional": {
            "family": ([AUTO, *sorted(PROFILES)], {
                "default": AUTO,
                "tooltip": "auto: the family is read from the diffusion model's tensors. Name it where they cannot "
                           "tell (families sharing one DiT); a family the tensors contradict is refused."}),
            "diffusion_model_2": ([NONE, *file_choices("diffusion_model_2")], {
                "default": NONE,
                "tooltip": "Wan2.2 A14B's second expert: the low-noise file, e.g. "
                           "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors (diffusion_model takes the high-noise "
                           "one). none for models with one diffusion model."}),
            "text_encoder_2": ([NONE, *file_choices("text_encoder_2")], {
                "default": NONE, "tooltip": "The second text encoder of families that have one: FLUX.1's T5-XXL "
                                            "(t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn_scaled.safetensors), "
                                            "SD3.5's clip_g. none for single-encoder families."}),
            "text_encoder_3": ([NONE, *file_choices("text_encoder_3")], {
                "default": NONE, "tooltip": "The third text encoder: SD3.5's T5-XXL. none otherwise."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, diffusion_model=None):
        # One input only: ComfyUI repeats a failing verdict for every input named here.
        return as_verdict(cls.queue_check, diffusion_model=diffusion_model)

    @classmethod
    def queue_check(cls, diffusion_model=None, text_encoder=None, vae=None, family=AUTO, diffusion_model_2=NONE,
                    text_encoder_2=NONE, text_encoder_3=NONE, **_ignored):
        """The files exist inside their folders, are safetensors, fit together and name a family we run
        (headers only). ComfyUI's own check passes the diffusion model alone: that file is checked."""
        if None not in (diffusion_model, text_encoder, vae):
            inspect_model_files(resolve_files(diffusion_model, text_encoder, vae, family, diffusion_model_2,
                                              text_encoder_2, text_encoder_3))
        elif diffusion_model is not None:
            path = resolve_file("diffusion_model", diffusion_model)
            detect_family(inspect_weights_file(path, "diffusion_model"))

    def load(self, diffusion_model, text_encoder, vae, dtype, device, family=AUTO, diffusion_model_2=NONE,
             text_encoder_2=NONE, text_encoder_3=NONE):
        files = resolve_files(diffusion_model, text_encoder, vae, family, diffusion_model_2, text_encoder_2,
                              text_encoder_3)
        return (ModelSpec.from_files(files, dtype=dtype, device=device),)


def resolve_files(diffusion_model: str, text_encoder: str, vae: str, family: str = AUTO,
                  diffusion_model_2: str = NONE, text_encoder_2: str = NONE, text_encoder_3: str = NONE) -> ModelFiles:
    given = (("diffusion_model", diffusion_model), ("text_encoder", text_encoder), ("vae", vae),
             ("diffusion_model_2", diffusion_model_2), ("text_encoder_2", text_encoder_2),
             ("text_encoder_3", text_encoder_3))
    paths = {name: str(resolve_file(name, value))
             for name, value in given if value not in (None, "", NONE)}
    paths.setdefault("text_encoder", "")  # none: the prompt comes as CONDITIONING
    return ModelFiles(**paths, family=family or AUTO, tokenizer_dirs=comfy_bridge.tokenizer_dirs())
