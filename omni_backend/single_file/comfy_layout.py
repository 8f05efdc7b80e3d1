"""`make-tiny --layout comfy`: a family's tiny model written as the single files ComfyUI users hold.

The weights are the diffusers-folder stand-in's (same builder, same seed), written under ComfyUI's
key names and file names into `DIR/diffusion_models/`, `DIR/text_encoders/` and `DIR/vae/`, in one of
the weight formats users have: bf16 (or fp32), plain fp8_e4m3fn, or ComfyUI's fp8_scaled (FP8 values
plus a float32 `.scale_weight` per matrix and a `scaled_fp8` marker). Each file carries its config in
its metadata (shapes cannot tell e.g. a tiny model's rotary axes); the tokenizer goes beside the text
encoder, where the loader looks before ComfyUI's own tokenizer folders, or into the text encoder file
itself where ComfyUI's files carry it (UMT5's `spiece_model`). Wan2.2 A14B's second expert
(transformer_2) is written as the low-noise DiT file.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHT_FORMATS = ("bf16", "fp32", "fp8_e4m3fn", "fp8_scaled")
DIT_PREFIX = "model.diffusion_model."  # what ComfyUI's own DiT files carry


def write_comfy_files(family_key: str, directory: str | Path, weights: str = "bf16") -> dict[str, Path]:
    import torch

    from ..families import FAMILIES
    from .model_files import PROFILES, kept_in_float32

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights!r}")
    if family_key not in PROFILES:
        raise ValueError(f"{family_key} has no single-file layout yet (have: {', '.join(sorted(PROFILES))})")
    profile = PROFILES[family_key]
    torch.manual_seed(0)  # the diffusers-folder stand-in's seed: same weights
    pipe = FAMILIES[family_key].build_tiny()
    directory = Path(directory)
    fp8 = weights.startswith("fp8")
    names = template_file_names(family_key, weights)
    plain = "fp32" if weights == "fp32" else "bf16"
    written = {}
    # Text encoders: FP8 templates pair the FP8 DiT with the encoders ComfyUI ships as fp8_scaled (their
    # names say fp8); the others (e.g. FLUX.1's clip_l) stay 16-bit, as in the templates.
    encoders = [(component, "text_encoders", name, "fp8_scaled" if fp8 and "fp8" in names[name] else plain)
                for name, component, *_ in profile.encoder_slots()]
    experts = [(profile.transformer, "diffusion_models", "diffusion_model_2", weights)] if profile.second_expert else []
    bundled = [(component, "checkpoints", name, plain) for name, component in profile.bundled.items()]
    bundle, bundle_metadata = {}, {}  # a checkpoints/ file's parts (Stable-Audio-Open's model.safetensors)
    for component, folder, input_name, fmt in (
            (profile.transformer, "diffusion_models", "diffusion_model", weights), *experts, *encoders,
            (profile.vae, "vae", "vae", plain), *bundled):
        module = getattr(pipe, _PIPELINE_PART.get(input_name, input_name))
        config = _config_of(module)
        original = {key: value for key, value in module.state_dict().items() if key not in component.stand_ins}
        # What the class keeps in float32 (Wan's norms, modulation, time embedding) stays float32 in the
        # file, so the model reads the values a diffusers folder gives it (ComfyUI's FP8 files also keep
        # their small tensors in a wider type).
        kept = kept_in_float32(type(module), component.library, torch.bfloat16)
        float32 = set(component.to_file_keys({key: None for key in original if kept(key)}, config))
        state = component.to_file_keys(original, config)
        check_round_trip(component, original, state, config)
        # Which file tensors are linear weights (FP8 formats store only those in FP8): the same key map
        # applied to a mask, so fused tensors (FLUX.1's qkv) count when all their parts are linears.
        linears = {f"{name}.weight" for name, child in module.named_modules() if isinstance(child, torch.nn.Linear)}
        mask = component.to_file_keys({key: torch.full(value.shape, key in linears) for key, value in original.items()},
                                      config)
        matrices = {key for key, value in mask.items() if value.numel() and bool(value.all())}
        tensors = _in_format(state, matrices, fmt, float32)
        if input_name in profile.bundle:  # one file, each part under its prefix and with its config
            bundle.update({profile.bundle[input_name] + key: value for key, value in tensors.items()})
            bundle_metadata["config" if input_name == "diffusion_model" else f"{input_name}_config"] = json.dumps(config)
            continue
        if input_name.startswith("diffusion_model"):
            tensors = {DIT_PREFIX + key: value for key, value in tensors.items()}
        if input_name == "text_encoder" and profile.tokenizer_tensor:
            from .umt5 import tokenizer_tensor

            tensors[profile.tokenizer_tensor] = tokenizer_tensor(pipe.tokenizer)
        path = directory / folder / names[input_name]
        path.parent.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file(tensors, path, metadata={"config": json.dumps(config)})
        written[input_name] = path
    if bundle:
        from safetensors.torch import save_file

        path = directory / "checkpoints" / names["diffusion_model"]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(bundle, path, metadata=bundle_metadata)
        written.update({name: path for name in profile.bundle if name in names})
    # One folder per tokenizer name, as ComfyUI ships them: SD3's CLIP-L and CLIP-G share sd1_tokenizer
    # (the first encoder's is written; the profile's tokenizer_setup adds CLIP-G's padding). A UMT5
    # tokenizer travels inside its text encoder file instead.
    for name, _component, tokenizer_folder, _cls in reversed(profile.encoder_slots()):
        if name == "text_encoder" and profile.tokenizer_tensor:
            continue
        getattr(pipe, name.replace("text_encoder", "tokenizer")).save_pretrained(
            directory / "text_encoders" / tokenizer_folder)
    if profile.processor is not None:  # the tiny image processor's settings, where the loader looks first
        processor = getattr(pipe, profile.processor_name)
        processor.image_processor.save_pretrained(directory / "text_encoders" / profile.tokenizer_folder)
    return written


_PIPELINE_PART = {"diffusion_model": "transformer", "diffusion_model_2": "transformer_2"}


def check_round_trip(component, original: dict, file_state: dict, config: dict) -> None:
    """The file's keys must read back to exactly the module's tensors through the loader's own map (for
    the VAE: diffusers' converter). A writer whose inverse drifted from the reader fails here, not later."""
    read = component.keys(dict(file_state), config)
    wrong = sorted(set(read) ^ set(original)) or [key for key in original if not torch_equal(read[key], original[key])]
    if wrong:
        raise AssertionError(f"{component.class_name}: the file layout does not read back ({wrong[:3]})")


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def template_file_names(family_key: str, weights: str) -> dict[str, str]:
    """The file names ComfyUI's templates give a family's files in that weight format (by input name:
    diffusion_model, text_encoder, vae, diffusion_model_2). FP8 templates pair the FP8 DiT with the
    fp8_scaled encoder (`te_suffix` in Qwen-Image's names, `te_weights` in UMT5's umt5_xxl_fp8_e4m3fn_scaled)."""
    from .model_files import PROFILES

    return PROFILES[family_key].template_names(weights)


def _config_of(module) -> dict:
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    return json.loads(json.dumps({key: value for key, value in config.items() if not key.startswith("_")},
                                 default=list))


def _in_format(state: dict, matrices: set, fmt: str, float32: set = frozenset()) -> dict:
    import torch

    out = {}
    if fmt == "fp8_scaled":
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        if key in float32 and tensor.is_floating_point():
            out[key] = tensor.to(torch.float32)
        elif key in matrices and fmt == "fp8_e4m3fn":
            out[key] = tensor.to(torch.float8_e4m3fn)
        elif key in matrices and fmt == "fp8_scaled":
            scale = (tensor.abs().max().float() / 448.0).clamp(min=1e-12)
            out[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        elif tensor.is_floating_point():
            out[key] = tensor.to(torch.float32 if fmt == "fp32" or key in float32 else torch.bfloat16)
        else:
            out[key] = tensor
    return out
