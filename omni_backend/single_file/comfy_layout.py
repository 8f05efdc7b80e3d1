"""`make-tiny --layout comfy`: a family's tiny model written as the single files ComfyUI users hold.

The weights are the diffusers-folder stand-in's (same builder, same seed), written under ComfyUI's
key names and file names into `DIR/diffusion_models/`, `DIR/text_encoders/` and `DIR/vae/`, in one of
the weight formats users have: bf16 (or fp32), plain fp8_e4m3fn, or ComfyUI's fp8_scaled (FP8 values
plus a float32 `.scale_weight` per matrix and a `scaled_fp8` marker). Each file carries its config in
its metadata (shapes cannot tell e.g. a tiny model's rotary axes); the tokenizer goes beside the text
encoder, where the loader looks before ComfyUI's own tokenizer folders.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHT_FORMATS = ("bf16", "fp32", "fp8_e4m3fn", "fp8_scaled")
DIT_PREFIX = "model.diffusion_model."  # what ComfyUI's own DiT files carry


def write_comfy_files(family_key: str, directory: str | Path, weights: str = "bf16") -> dict[str, Path]:
    import torch

    from ..families import FAMILIES
    from .model_files import PROFILES

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
    written = {}
    for component, folder, input_name, fmt in (
            (profile.transformer, "diffusion_models", "diffusion_model", weights),
            (profile.text_encoder, "text_encoders", "text_encoder", "fp8_scaled" if fp8 else weights),
            (profile.vae, "vae", "vae", "fp32" if weights == "fp32" else "bf16")):
        module = getattr(pipe, {"diffusion_model": "transformer"}.get(input_name, input_name))
        config = _config_of(module)
        state = {key: value for key, value in module.state_dict().items() if key not in component.stand_ins}
        state = component.to_file_keys(state, config)
        matrices = {component.to_file_keys({f"{name}.weight": None}, config).popitem()[0]
                    for name, child in module.named_modules() if isinstance(child, torch.nn.Linear)}
        tensors = _in_format(state, matrices, fmt)
        if input_name == "diffusion_model":
            tensors = {DIT_PREFIX + key: value for key, value in tensors.items()}
        path = directory / folder / names[input_name]
        path.parent.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file(tensors, path, metadata={"config": json.dumps(config)})
        written[input_name] = path
    pipe.tokenizer.save_pretrained(directory / "text_encoders" / profile.tokenizer_folder)
    return written


def template_file_names(family_key: str, weights: str) -> dict[str, str]:
    """The file names ComfyUI's templates give a family's files in that weight format (by input name:
    diffusion_model, text_encoder, vae). FP8 templates pair the FP8 DiT with the fp8_scaled encoder."""
    from .model_files import PROFILES

    suffix = "_fp8_scaled" if weights.startswith("fp8") else ""
    return {key: pattern.format(weights=weights, te_suffix=suffix)
            for key, pattern in PROFILES[family_key].file_names.items()}


def _config_of(module) -> dict:
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    return json.loads(json.dumps({key: value for key, value in config.items() if not key.startswith("_")},
                                 default=list))


def _in_format(state: dict, matrices: set, fmt: str) -> dict:
    import torch

    out = {}
    if fmt == "fp8_scaled":
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        if key in matrices and fmt == "fp8_e4m3fn":
            out[key] = tensor.to(torch.float8_e4m3fn)
        elif key in matrices and fmt == "fp8_scaled":
            scale = (tensor.abs().max().float() / 448.0).clamp(min=1e-12)
            out[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        elif tensor.is_floating_point():
            out[key] = tensor.to(torch.float32 if fmt == "fp32" else torch.bfloat16)
        else:
            out[key] = tensor
    return out
