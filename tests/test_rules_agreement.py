"""The browser's checker (web/graph_check.js) and the Python validator agree, message for message.

Both read the same workflow files: the fixtures in tests/workflow_fixtures and a sweep of every
family under many feature combinations. The JavaScript side gets the rules document the ComfyUI
route serves, built here for the tiny models; the committed snapshot the JavaScript unit tests use
(rules_tiny.json) must equal it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from omni_backend.families import FAMILIES
from omni_diffusion_nodes.headless.recipes import LORA_FILES, base_workflow
from omni_diffusion_nodes.headless.validate import validate_workflow
from omni_diffusion_nodes.headless.workflow_format import is_ui_format
from omni_diffusion_nodes.nodes.rules_route import rules_document

PACK_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = PACK_ROOT / "tests" / "workflow_fixtures"
CHECK_SCRIPT = PACK_ROOT / "web" / "tests" / "check_workflows.mjs"
NODE = shutil.which("node")


def test_the_javascript_tests_use_the_current_rules(headless):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fixture_build", FIXTURES / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    current = build.rules_snapshot_text(headless.models_dir)
    assert (FIXTURES / "rules_tiny.json").read_text() == current, \
        "the rules changed: regenerate the snapshot with `python tests/workflow_fixtures/build.py`"


def cpus(count: int) -> str:
    return ",".join(["cpu"] * count)


def layout(**degrees):
    return ("OmniParallelConfig", degrees)


# Feature chains tried on every family: each rule trips somewhere in here, and most chains pass
# somewhere too. Devices are listed where the world size is odd (a listed device per local rank).
SWEEP = {
    "teacache": [("OmniApplyTeaCache", {})],
    "cache-dit": [("OmniApplyCacheDiT", {})],
    "cache-dit-fn1-bn1": [("OmniApplyCacheDiT", dict(Fn_compute_blocks=1, Bn_compute_blocks=1))],
    "cache-dit-scm-preset": [("OmniApplyCacheDiT", dict(preset="DBCache + TaylorSeer + SCM fast (Fn8 B0 W4)"))],
    "two-caches": [("OmniApplyCacheDiT", {}), ("OmniApplyTeaCache", {})],
    "ulysses2": [layout(ulysses_degree=2)],
    "ulysses3": [layout(ulysses_degree=3, devices=cpus(3))],
    "ring2-vae2": [layout(ring_degree=2, vae_patch_parallel=2)],
    "cfg2": [layout(cfg_parallel=2)],
    "tp2": [layout(tensor_parallel=2)],
    "tp3": [layout(tensor_parallel=3, devices=cpus(3))],
    "ulysses3-tp2": [layout(ulysses_degree=3, tensor_parallel=2, devices=cpus(6))],
    "ring16": [layout(ring_degree=16)],
    "ring4-remote2": [layout(ring_degree=4, remote_ranks=2, rendezvous="10.0.0.1:29500")],
    "layerwise-then-ulysses2": [("OmniOffloadFP8", dict(offload="layerwise")), layout(ulysses_degree=2)],
    "cfg2-then-layerwise-fp8": [layout(cfg_parallel=2), ("OmniOffloadFP8", dict(offload="layerwise", fp8="w8a8"))],
    "fp8-then-tp2": [("OmniOffloadFP8", dict(fp8="weight_only")), layout(tensor_parallel=2)],
    "model-offload-tp2": [("OmniOffloadFP8", dict(offload="model")), layout(tensor_parallel=2)],
    "lora-transformer-2": [("OmniLoadLoRA", dict(lora_name=LORA_FILES[0], component="transformer_2"))],
    "lora-text-encoder-2": [("OmniLoadLoRA", dict(lora_name=LORA_FILES[1], component="text_encoder_2"))],
    # Wrong inputs of one node (reported by its VALIDATE_INPUTS): both checkers pass the node over.
    "ulysses2-vae4": [layout(ulysses_degree=2, vae_patch_parallel=4)],
    "fp8-text-encoder-only-then-tp2": [("OmniOffloadFP8", dict(fp8_text_encoder=True)), layout(tensor_parallel=2)],
    "everything-wrong": [("OmniApplyTeaCache", {}), layout(ulysses_degree=3, cfg_parallel=2, devices=cpus(6)),
                         ("OmniOffloadFP8", dict(offload="layerwise")), ("OmniApplyCacheDiT", {}),
                         ("OmniLoadLoRA", dict(lora_name=LORA_FILES[0], component="transformer_2"))],
}


def sweep_workflows(directory: Path) -> list[Path]:
    paths = []
    for family in FAMILIES:
        for name, features in SWEEP.items():
            path = directory / f"{family}--{name}.json"
            path.write_text(json.dumps(base_workflow(family, features)))
            paths.append(path)
    return paths


def python_problems(path: Path) -> list[tuple]:
    found = validate_workflow(json.loads(path.read_text()))
    return sorted((p.node_id, p.rule, p.problem, p.fix) for p in found if p.rule)


def javascript_problems(paths: list[Path], rules_file: Path) -> dict[str, list[tuple]]:
    result = subprocess.run([NODE, str(CHECK_SCRIPT), str(rules_file), *map(str, paths)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return {name: sorted((p["node"], p["rule"], f"{p['first']} cannot be combined with {p['second']}: {p['reason']}",
                          p["fix"]) for p in problems) for name, problems in report.items()}


@pytest.mark.skipif(NODE is None, reason="node (Node.js 20) is not installed")
def test_javascript_and_python_find_the_same_problems(headless, tmp_path):
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules_document()))  # what GET /omni_diffusion/rules serves here
    fixtures = [p for p in sorted(FIXTURES.glob("*.json"))
                if p.name in json.loads((FIXTURES / "expected.json").read_text())["expected"]
                and is_ui_format(json.loads(p.read_text()))]
    paths = fixtures + sweep_workflows(tmp_path)
    from_javascript = javascript_problems(paths, rules_file)
    seen_rules = set()
    for path in paths:
        from_python = python_problems(path)
        assert from_javascript[path.name] == from_python, path.name
        seen_rules |= {rule for _node, rule, _problem, _fix in from_python}
    from omni_backend.compat import RULE_DEFS

    assert seen_rules == set(RULE_DEFS) - {"lora.loader"}, "the sweep must trip every rule a shipped family can"
