"""The shipped workflows, as code. `python -m omni_diffusion_nodes.headless.recipes DIR` writes them.

The JSON files in workflows/ are what users load; they are regenerated from here only on purpose,
because a changed widget list breaks every workflow users saved with the old one (the test suite
checks the committed files against the nodes' current inputs).

Each family's workflow comes from the family module itself (`example_model`, `example_sample`,
`example_prompt`): model names are the real checkpoints' folder names under models/diffusers; the
tests put tiny random-weight stand-ins under the same names and run the files unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omni_backend.families import FAMILIES

from .builder import WorkflowBuilder
from .node_classes import all_node_classes


def base_workflow(family: str, features=(), filename_prefix: str | None = None, sample: dict | None = None,
                  loader: tuple[str, dict] | None = None, options: dict | None = None) -> dict:
    """Load -> [features...] -> Sample (+ the family's option node) -> Decode -> Save. `features`: (node
    type, widgets) pairs; `sample` / `options`: Sample and option-node settings that differ from the family's
    usual ones; `loader`: another loader node than Load Omni Model on the family's diffusers folder."""
    entry = FAMILIES[family]
    settings = {**entry.example_sample, **(sample or {})}
    builder = WorkflowBuilder(all_node_classes())
    loader_type, loader_widgets = loader or ("OmniLoadModel", dict(model_name=entry.example_model))
    model = builder.add(loader_type, **loader_widgets)
    for node_type, widgets in features:
        node = builder.add(node_type, **widgets)
        builder.connect(model, node, "model")
        model = node
    sample = builder.add("OmniSampleV2", prompt=entry.example_prompt, seed=42, **settings)
    image = None
    if entry.requires_image:
        image = builder.add("LoadImage", image=EXAMPLE_IMAGE)
        builder.connect(image, sample, "image")
    option_settings = {**entry.example_options, **(options or {})}
    if option_settings or entry.layered:  # the layered model takes the image's transparency on its options
        group = entry.option_groups[0]
        option_node = builder.add(group.node_id, **option_settings)
        builder.connect(option_node, sample, "options")
        if entry.layered:
            builder.connect(image, option_node, "mask", output_slot=1)
    kind = "audio" if entry.audio else "layers" if entry.layered else "images"
    decode = builder.add(DECODERS[kind])
    builder.chain((model, sample, "model"), (model, decode, "model"), (sample, decode, "samples"))
    prefix = filename_prefix or f"omni-{family}"
    if entry.audio:
        save = builder.add("SaveAudio", filename_prefix=f"audio/{prefix}")
        builder.connect(decode, save, "audio")
    elif entry.layered:  # every layer with its transparency: images + masks -> core Join Image with Alpha -> RGBA PNGs
        join = builder.add("JoinImageWithAlpha")
        save = builder.add("SaveImage", filename_prefix=prefix)
        builder.chain((decode, join, "image"), (join, save, "images"))
        builder.connect(decode, join, "alpha", output_slot=1)
    else:
        save = (builder.add("SaveAnimatedPNG", filename_prefix=prefix, fps=16.0) if entry.video
                else builder.add("SaveImage", filename_prefix=prefix))
        builder.connect(decode, save, "images")
    return builder.to_json()


# The decoder of each kind of output (nodes/vae_decode.py).
DECODERS = {"images": "OmniVAEDecodeImages", "audio": "OmniVAEDecodeAudio", "layers": "OmniVAEDecodeLayers"}


DEMO_PROMPT = "a large red circle at the top left on a blue background"  # the reference model's caption form


def demo_workflow(model_name: str) -> dict:
    """What `omni-diffusion demo` runs: the Qwen-Image graph on the built-in model, small and quick."""
    builder = WorkflowBuilder(all_node_classes())
    model = builder.add("OmniLoadModel", model_name=model_name, dtype="fp32", device="cpu")
    sample = builder.add("OmniSampleV2", prompt=DEMO_PROMPT, seed=0,
                         steps=25, guidance=4.0, width=64, height=64)
    decode = builder.add("OmniVAEDecodeImages")
    save = builder.add("SaveImage", filename_prefix="omni-demo")
    builder.chain((model, sample, "model"), (model, decode, "model"), (sample, decode, "samples"),
                  (decode, save, "images"))
    return builder.to_json()


DEMO_EDIT = "make the circle green"  # an instruction of the reference edit model's form


def demo_edit_workflow(model_name: str, edit_model_name: str) -> dict:
    """What `omni-diffusion demo --edit` runs: the demo's scene, then the reference edit model changes it
    (the first decode's image is the edit's input); both images are saved."""
    builder = WorkflowBuilder(all_node_classes())
    model = builder.add("OmniLoadModel", model_name=model_name, dtype="fp32", device="cpu")
    sample = builder.add("OmniSampleV2", prompt=DEMO_PROMPT, seed=0, steps=25, guidance=4.0, width=64, height=64)
    decode = builder.add("OmniVAEDecodeImages")
    save = builder.add("SaveImage", filename_prefix="omni-demo")
    edit_model = builder.add("OmniLoadModel", model_name=edit_model_name, dtype="fp32", device="cpu")
    edit = builder.add("OmniSampleV2", prompt=DEMO_EDIT, seed=0, steps=20, guidance=4.0, width=64, height=64)
    edit_decode = builder.add("OmniVAEDecodeImages")
    edit_save = builder.add("SaveImage", filename_prefix="omni-demo-edit")
    builder.chain((model, sample, "model"), (model, decode, "model"), (sample, decode, "samples"),
                  (decode, save, "images"), (decode, edit, "image"), (edit_model, edit, "model"),
                  (edit_model, edit_decode, "model"), (edit, edit_decode, "samples"),
                  (edit_decode, edit_save, "images"))
    return builder.to_json()


# The input image the image-conditioned workflows name (under ComfyUI's input/; users pick their own).
EXAMPLE_IMAGE = "example.png"

# The LoRA files the LoRA workflow names (under models/loras; users pick their own in the node).
LORA_FILES = ("qwen-image-style-lora.safetensors", "qwen-image-detail-lora.safetensors")


def shipped_workflows() -> dict[str, dict]:
    """file name -> workflow; one per family now, feature workflows join as features land."""
    workflows = {f"{family}.json": base_workflow(family) for family in FAMILIES}
    # 512 px keeps it quick on the tiny stand-in the test suite runs it with; users set their size.
    workflows["qwen-image-two-loras.json"] = base_workflow(
        "qwen-image", features=[("OmniLoadLoRA", dict(lora_name=LORA_FILES[0], strength=0.8)),
                                ("OmniLoadLoRA", dict(lora_name=LORA_FILES[1], strength=0.5))],
        filename_prefix="omni-qwen-image-loras", sample=dict(width=512, height=512))
    workflows.update(cache_workflows())
    workflows.update(parallel_workflows())
    workflows.update(memory_workflows())
    workflows.update(comfy_file_workflows())
    return workflows


# The families whose workflows load ComfyUI's single files, in the weight formats of ComfyUI's templates.
COMFY_FILE_FAMILIES = {"qwen-image": "fp8_e4m3fn", "wan2.2": "fp8_scaled", "flux": "bf16"}


def comfy_file_workflows() -> dict[str, dict]:
    from omni_backend.single_file.comfy_layout import template_file_names

    return {f"{family}-comfy-files.json": base_workflow(
        family, loader=("OmniLoadModelFiles", template_file_names(family, weights)),
        filename_prefix=f"omni-{family}-comfy-files") for family, weights in COMFY_FILE_FAMILIES.items()}


def cache_workflows() -> dict[str, dict]:
    # A quality target: the first run finds the threshold that keeps 35 dB on this model and size.
    teacache = ("OmniApplyTeaCache", dict(rel_l1_thresh=0.2, target_db=35.0))
    taylorseer = ("OmniApplyCacheDiT", dict(preset="DBCache + TaylorSeer (Fn1 B0 W8)", enable_taylorseer=True,
                                            max_warmup_steps=8))
    dbcache = ("OmniApplyCacheDiT", dict(preset="vllm-omni default (Fn1 B0 W4)"))
    return {
        "qwen-image-teacache.json": base_workflow("qwen-image", [teacache], "omni-qwen-image-teacache",
                                                  sample=dict(width=512, height=512)),
        "qwen-image-cache-dit-taylorseer.json": base_workflow("qwen-image", [taylorseer],
                                                              "omni-qwen-image-cache-dit"),
        "z-image-cache-dit.json": base_workflow("z-image", [dbcache], "omni-z-image-cache-dit"),
        "wan2.2-cache-dit.json": base_workflow("wan2.2", [dbcache], "omni-wan2.2-cache-dit"),
    }


def memory_workflows() -> dict[str, dict]:
    # Memory savers are for small GPUs, so these also run at a smaller size than the family's usual
    # one (which keeps them quick on the tiny stand-ins the test suite runs them with).
    layerwise_fp8 = ("OmniOffloadFP8", dict(offload="layerwise", blocks_on_device=2, fp8="weight_only"))
    model_offload = ("OmniOffloadFP8", dict(offload="model"))
    return {
        "qwen-image-layerwise-fp8.json": base_workflow("qwen-image", [layerwise_fp8], "omni-qwen-image-layerwise-fp8",
                                                       sample=dict(width=512, height=512)),
        "wan2.2-model-offload.json": base_workflow("wan2.2", [model_offload], "omni-wan2.2-model-offload",
                                                   sample=dict(width=480, height=272), options=dict(frames=9)),
        # Image-to-video A14B at its 480p size, the experts taking turns on the device with the rest.
        "wan2.2-i2v-model-offload.json": base_workflow("wan2.2-i2v", [model_offload], "omni-wan2.2-i2v-model-offload"),
    }


def parallel_workflows() -> dict[str, dict]:
    def layout(**degrees):
        return ("OmniParallelConfig", degrees)

    # Smaller than the families' usual sizes: on the test suite's CPU ranks these run on two cores.
    return {
        "qwen-image-ulysses2.json": base_workflow("qwen-image", [layout(ulysses_degree=2)],
                                                  "omni-qwen-image-ulysses2", sample=dict(width=512, height=512)),
        "wan2.2-ulysses2-cfg2.json": base_workflow("wan2.2", [layout(ulysses_degree=2, cfg_parallel=2)],
                                                   "omni-wan2.2-ulysses2-cfg2",
                                                   sample=dict(width=480, height=272), options=dict(frames=9)),
        # Image-to-video on four GPUs: each CFG branch's sequence (video and image-latent channels)
        # split across two ranks.
        "wan2.2-i2v-ulysses2-cfg2.json": base_workflow("wan2.2-i2v", [layout(ulysses_degree=2, cfg_parallel=2)],
                                                       "omni-wan2.2-i2v-ulysses2-cfg2",
                                                       sample=dict(width=480, height=272), options=dict(frames=9)),
        "z-image-tp2-vae-patch2.json": base_workflow("z-image", [layout(tensor_parallel=2, vae_patch_parallel=2)],
                                                     "omni-z-image-tp2-vae-patch2",
                                                     sample=dict(width=512, height=512)),
    }


def main(argv=None) -> None:
    target = Path((argv or sys.argv[1:] or ["workflows"])[0])
    target.mkdir(parents=True, exist_ok=True)
    for name, workflow in shipped_workflows().items():
        (target / name).write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
        print(target / name)


if __name__ == "__main__":
    main()
