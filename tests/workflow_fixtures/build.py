"""Write the deliberately broken (and a few valid) workflow files and what each must report.

    python tests/workflow_fixtures/build.py

The validator (`omni-diffusion validate`, tests/engine/test_validate.py) and the server's graph check that
the browser extension asks (tests/nodes/test_check_route.py) read these files. expected.json lists, per
file, the problems: {"node", "rule"} for a compat rule, {"node", "contains"} for other problems
(input values, files, widget layout). Model names are the real
folder names the test suite gives its tiny stand-ins (2 blocks and 4 attention heads each); entries
marked "tiny" in NOTES only trip on those.
"""

from __future__ import annotations

import json
from pathlib import Path

from omni_diffusion_nodes.headless.builder import WorkflowBuilder
from omni_diffusion_nodes.headless.node_classes import all_node_classes
from omni_diffusion_nodes.headless.recipes import LORA_FILES, base_workflow
from omni_diffusion_nodes.headless.runner import to_prompt

from omni_backend.families import FAMILIES

HERE = Path(__file__).resolve().parent

QWEN, SD3, FLUX, WAN, Z_IMAGE = (FAMILIES[k].example_model for k in ("qwen-image", "sd3", "flux", "wan2.2", "z-image"))


def teacache():
    return ("OmniApplyTeaCache", {})


def cache_dit(**widgets):
    return ("OmniApplyCacheDiT", widgets)


def layout(**degrees):
    return ("OmniParallelConfig", degrees)


def memory(**widgets):
    return ("OmniOffloadFP8", widgets)


def lora(**widgets):
    return ("OmniLoadLoRA", {"lora_name": LORA_FILES[0], **widgets})


def rule(node: int, rule_id: str) -> dict:
    return {"node": str(node), "rule": rule_id}


def other(node: int, fragment: str) -> dict:
    return {"node": str(node), "contains": fragment}


def chain(family: str, *features, sample: dict | None = None) -> dict:
    # Node ids: 1 Load Omni Model, 2.. the features in order, then Sample, Decode, Save.
    return base_workflow(family, list(features), sample=dict(width=512, height=512, **(sample or {})))


def add_sample_decode_save(builder, head) -> None:
    """One branch's end: Sample and VAE Decode on `head`'s model, then Save Image."""
    sample = builder.add("OmniSample", steps=8, width=512, height=512)
    decode = builder.add("OmniVAEDecode")
    save = builder.add("SaveImage", filename_prefix="omni-fixture")
    builder.chain((head, sample, "model"), (head, decode, "model"), (decode, save, "images"))
    builder.connect(sample, decode, "samples")


def branches_and_bypass() -> dict:
    """Two branches from one loader; a bypassed TeaCache on SD3.5 (bypassed: not applied)."""
    builder = WorkflowBuilder(all_node_classes())
    load = builder.add("OmniLoadModel", model_name=SD3)
    skipped = builder.add("OmniApplyTeaCache", mode=4)
    cached = builder.add("OmniApplyCacheDiT")
    for head in (skipped, cached):
        builder.connect(load, head, "model")
        add_sample_decode_save(builder, head)
    return builder.to_json()


def one_bad_branch() -> dict:
    """FLUX.1-dev: CFG-parallel on one branch (refused: distilled guidance), ring attention on the other."""
    builder = WorkflowBuilder(all_node_classes())
    load = builder.add("OmniLoadModel", model_name=FLUX)
    for degrees in (dict(cfg_parallel=2), dict(ring_degree=2)):
        head = builder.add("OmniParallelConfig", **degrees)
        builder.connect(load, head, "model")
        add_sample_decode_save(builder, head)
    return builder.to_json()


def with_model(workflow: dict, name: str) -> dict:
    workflow["nodes"][0]["widgets_values"][0] = name  # Load Omni Model's model_name
    return workflow


# file name -> (workflow, expected problems)
FIXTURES = {
    "teacache-on-sd3.json": (chain("sd3", teacache()), [rule(2, "teacache.family")]),
    "teacache-then-cache-dit.json": (chain("qwen-image", teacache(), cache_dit()), [rule(3, "cache.one_method")]),
    "cache-dit-no-blocks-left.json": (chain("qwen-image", cache_dit(Fn_compute_blocks=64, Bn_compute_blocks=64)),
                                      [rule(2, "cache_dit.blocks_left")]),
    "cache-dit-preset-no-blocks-left.json": (
        chain("z-image", cache_dit(preset="DBCache + TaylorSeer + SCM fast (Fn8 B0 W4)")),
        [rule(2, "cache_dit.blocks_left")]),
    "ulysses-on-sd3.json": (chain("sd3", layout(ulysses_degree=2)), [rule(2, "parallel.sequence_plan")]),
    "ulysses-3-tensor-parallel-2-on-qwen.json": (
        chain("qwen-image", layout(ulysses_degree=3, tensor_parallel=2, devices=",".join(["cpu"] * 6))),
        [rule(2, "parallel.heads")]),
    "tensor-parallel-on-sd3.json": (chain("sd3", layout(tensor_parallel=2)), [rule(2, "parallel.tensor_plan")]),
    "tensor-parallel-3-on-qwen.json": (chain("qwen-image", layout(tensor_parallel=3, devices="cpu,cpu,cpu")),
                                       [rule(2, "parallel.tensor_widths")]),
    "cfg-parallel-on-flux.json": (chain("flux", layout(cfg_parallel=2)), [rule(2, "parallel.cfg_branch")]),
    "too-many-ranks.json": (chain("qwen-image", layout(ring_degree=16)), [rule(2, "parallel.devices")]),
    "layerwise-offload-after-parallel.json": (
        chain("qwen-image", layout(ulysses_degree=2), memory(offload="layerwise")),
        [rule(3, "memory.layerwise_offload_multi_device")]),
    "parallel-after-layerwise-offload.json": (
        chain("qwen-image", memory(offload="layerwise"), layout(ulysses_degree=2)),
        [rule(3, "memory.layerwise_offload_multi_device")]),
    "fp8-with-tensor-parallel.json": (chain("qwen-image", memory(fp8="weight_only"), layout(tensor_parallel=2)),
                                      [rule(3, "memory.fp8_tensor_parallel")]),
    "lora-component-missing.json": (chain("sd3", lora(component="transformer_2")), [rule(2, "lora.component")]),
    "problems-on-two-nodes.json": (chain("wan2.2", teacache(), layout(ulysses_degree=3, devices="cpu,cpu,cpu")),
                                   [rule(2, "teacache.family"), rule(3, "parallel.heads")]),
    "branches-and-bypass.json": (branches_and_bypass(), []),
    "one-bad-branch.json": (one_bad_branch(), [rule(2, "parallel.cfg_branch")]),
    "unknown-model.json": (with_model(chain("qwen-image"), "No-Such-Model"), [other(1, "not found")]),
    "missing-lora-file.json": (chain("qwen-image", lora(lora_name="missing-lora.safetensors")),
                               [other(2, "not found")]),
    "steps-out-of-range.json": (chain("z-image", sample=dict(steps=0)), [other(2, "steps = 0: below the minimum 1")]),
    "fp8-text-encoder-without-fp8.json": (chain("qwen-image", memory(fp8_text_encoder=True)),
                                          [other(2, "fp8_text_encoder")]),
}
NOTES = {
    "cache-dit-preset-no-blocks-left.json": "tiny: Fn 8 leaves nothing of 2 blocks (the real Z-Image has 30)",
    "tensor-parallel-3-on-qwen.json": "tiny: 4 heads (the real Qwen-Image's 24 divide by 3)",
    "ulysses-3-tensor-parallel-2-on-qwen.json": "tiny: 4 heads (the real Qwen-Image's 24 divide by 6)",
    "problems-on-two-nodes.json": "the real Wan2.2's 40 heads do not divide by 3 either",
}
# API-format files (what Export (API) writes): the Python validator reads them too.
API_FIXTURES = {
    "teacache-on-wan-api.json": ("problems-on-two-nodes.json",
                                 [rule(2, "teacache.family"), rule(3, "parallel.heads")]),
}


def main() -> None:
    expected = {}
    for name, (workflow, problems) in FIXTURES.items():
        (HERE / name).write_text(json.dumps(workflow, indent=1) + "\n", encoding="utf-8")
        expected[name] = problems
    for name, (source, problems) in API_FIXTURES.items():
        prompt = to_prompt(FIXTURES[source][0])
        (HERE / name).write_text(json.dumps(prompt, indent=1) + "\n", encoding="utf-8")
        expected[name] = problems
    manifest = {"expected": expected, "notes": NOTES}
    (HERE / "expected.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(expected)} fixtures to {HERE}")


if __name__ == "__main__":
    main()
