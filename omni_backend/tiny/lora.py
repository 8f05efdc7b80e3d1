"""Tiny LoRA files for tiny model folders: made with peft on the model's own layers, no download.

    python -m omni_backend.tiny.lora MODEL_DIR OUT.safetensors [--layout kohya] [--rank 4] [--seed 0]

The adapter is peft's own (`inject_adapter_in_model` with random A and B), saved the way users get
LoRA files:
- "diffusers": the pipeline's `save_lora_weights`, with the adapter config in the file's metadata
  (what diffusers' and peft's training scripts write);
- "kohya": `lora_unet_<module_with_underscores>.lora_down/.lora_up/.alpha` (kohya sd-scripts,
  musubi-tuner, ai-toolkit);
- "comfyui": `diffusion_model.<module>.lora_A/.lora_B/.alpha` (ComfyUI's own trainer).
The community layouts are written only for families whose loader converts them: diffusers'
(`lora_conversion_utils`) for Qwen-Image, ours (families/peft_lora.py) for the ComfyUI layout of
LongCat and Ovis; each holds the same A, B and alpha as the diffusers file made with the same seed,
so they load to the same adapter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..weights.model_folder import inspect_model_folder

LAYOUTS = ("diffusers", "kohya", "comfyui")
# Families whose LoRA loader converts each community layout written here.
COMMUNITY_LAYOUT_FAMILIES = {"kohya": ("qwen-image",),
                             "comfyui": ("qwen-image", "longcat-image", "longcat-image-edit", "ovis-image")}

# Attention projections, by the names the six families' diffusers transformers use.
TRANSFORMER_TARGETS = r".*\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out|to_qkv_mlp_proj)"
TEXT_ENCODER_TARGETS = r".*\.(q_proj|k_proj|v_proj|out_proj)"


def make_tiny_lora(model_folder, target_file, *, rank: int = 4, alpha: float | None = None, seed: int = 0,
                   layout: str = "diffusers", text_encoder: bool = False, target_modules: str | None = None,
                   component: str = "transformer") -> Path:
    """Write a random LoRA for the model in `model_folder` to `target_file` and return its path.

    rank/alpha: peft's `r` and `lora_alpha` (alpha defaults to rank, i.e. scale 1).
    text_encoder: also adapt the pipeline's `text_encoder` (FLUX.1, SD3.5; diffusers layout only).
    component: which denoiser's layers to read (`transformer_2` for Wan2.2's second expert); the
    keys are written as `transformer.*` either way, as diffusers' Wan loader expects.
    """
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    info = inspect_model_folder(model_folder)
    if layout != "diffusers" and info.family_key not in COMMUNITY_LAYOUT_FAMILIES[layout]:
        raise ValueError(f"the {layout} layout is written only for {', '.join(COMMUNITY_LAYOUT_FAMILIES[layout])}")
    if text_encoder and layout != "diffusers":
        raise ValueError("text-encoder LoRAs are written in the diffusers layout only")
    target_file = Path(target_file)
    target_file.parent.mkdir(parents=True, exist_ok=True)
    alpha = float(rank if alpha is None else alpha)

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules or TRANSFORMER_TARGETS,
                        init_lora_weights=False)
    transformer = _load_component(info, component)
    inject_adapter_in_model(config, transformer)
    layers = {k: v.contiguous() for k, v in get_peft_model_state_dict(transformer).items()}

    if layout == "diffusers":
        kwargs = dict(transformer_lora_layers=layers, transformer_lora_adapter_metadata=config.to_dict())
        if text_encoder:
            te_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT_ENCODER_TARGETS,
                                   init_lora_weights=False)
            encoder = _load_component(info, "text_encoder")
            inject_adapter_in_model(te_config, encoder)
            kwargs["text_encoder_lora_layers"] = {k: v.contiguous()
                                                  for k, v in get_peft_model_state_dict(encoder).items()}
            kwargs["text_encoder_lora_adapter_metadata"] = te_config.to_dict()
        pipeline_class = info.family.pipeline_class(info.pipeline_class)
        if hasattr(pipeline_class, "save_lora_weights"):
            pipeline_class.save_lora_weights(target_file.parent, weight_name=target_file.name,
                                             safe_serialization=True, **kwargs)
        else:  # no LoRA mixin (Stable Audio): the same file through diffusers' shared writer
            from diffusers.loaders.lora_base import LoraBaseMixin

            LoraBaseMixin._save_lora_weights(target_file.parent, lora_layers={"transformer": layers},
                                             lora_metadata={"transformer": config.to_dict()},
                                             weight_name=target_file.name, safe_serialization=True)
    else:
        _save_community_layout(layers, alpha, layout, target_file)
    return target_file


def _load_component(info, component: str):
    """One component of the model folder, loaded on its own (the rest of the pipeline is not needed)."""
    import importlib

    library, class_name = info.components[component]
    module_class = getattr(importlib.import_module(library), class_name)
    return module_class.from_pretrained(info.component_path(component), local_files_only=True).eval()


def _save_community_layout(layers: dict, alpha: float, layout: str, target_file: Path) -> None:
    import torch
    from safetensors.torch import save_file

    out = {}
    for key, value in layers.items():
        module, kind = key.rsplit(".lora_", 1)  # "transformer_blocks.0.attn.to_q", "A.weight"
        if layout == "kohya":
            stem = "lora_unet_" + module.replace(".", "_")
            out[f"{stem}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        else:
            stem = "diffusion_model." + module
            out[f"{stem}.lora_{kind}"] = value
        out[f"{stem}.alpha"] = torch.tensor(alpha)
    save_file(out, str(target_file), metadata={"format": "pt", "omni_tiny_layout": layout})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_folder")
    parser.add_argument("target_file")
    parser.add_argument("--layout", choices=LAYOUTS, default="diffusers")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-encoder", action="store_true")
    parser.add_argument("--component", default="transformer")
    args = parser.parse_args(argv)
    path = make_tiny_lora(args.model_folder, args.target_file, rank=args.rank, alpha=args.alpha, seed=args.seed,
                          layout=args.layout, text_encoder=args.text_encoder, component=args.component)
    print(json.dumps({"file": str(path), "layout": args.layout}))


if __name__ == "__main__":
    main()
