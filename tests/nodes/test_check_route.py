"""The server's graph check (POST /omni_diffusion/check) that the browser extension asks.

It is the validator's own check on the pack's part of a graph, so on every workflow fixture and on
a sweep of every family under many feature chains it reports exactly the feature problems that
`omni-diffusion validate` reports, at the same nodes, with the same words; and the sweep trips
every rule a shipped family can.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from omni_backend.families import FAMILIES
from omni_backend.spec import all_rules
from omni_diffusion_nodes.graph.workflow_format import is_ui_format
from omni_diffusion_nodes.headless.recipes import LORA_FILES, base_workflow
from omni_diffusion_nodes.headless.validate import validate_workflow
from omni_diffusion_nodes.nodes.check_route import answer

PACK_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = PACK_ROOT / "tests" / "workflow_fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())["expected"]


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
    "compile": [("OmniCompile", {})],
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


def rule_problems_of_validator(workflow: dict) -> list[tuple]:
    return sorted((p.node_id, p.rule, p.problem, p.fix) for p in validate_workflow(workflow) if p.rule)


def rule_problems_of_route(workflow: dict) -> list[tuple]:
    body, status = answer(workflow)
    assert status == 200, body
    return sorted((p["node"], p["rule"], p["problem"], p["fix"]) for problems in body["problems"].values()
                  for p in problems if p["rule"])


UI_FIXTURES = sorted(name for name in EXPECTED if is_ui_format(json.loads((FIXTURES / name).read_text())))


@pytest.mark.parametrize("name", UI_FIXTURES)
def test_the_route_reports_what_the_validator_reports(headless, name):
    workflow = json.loads((FIXTURES / name).read_text())
    found = rule_problems_of_route(workflow)
    assert found == rule_problems_of_validator(workflow)
    for wanted in EXPECTED[name]:
        if "rule" in wanted:
            assert (wanted["node"], wanted["rule"]) in {(node, rule) for node, rule, *_ in found}, wanted


@pytest.mark.slow
def test_a_sweep_of_every_family_trips_every_rule_the_same_way(headless):
    """The validator checks every family under every chain; the route (the same check behind an HTTP
    handler, as fast) answers the fewest of those graphs that still hold every family, every chain and
    every rule the sweep trips, and must answer each exactly as the validator does."""
    verdicts = {}
    for family in FAMILIES:
        for name, features in SWEEP.items():
            workflow = json.loads(json.dumps(base_workflow(family, features)))
            verdicts[family, name] = (workflow, rule_problems_of_validator(workflow))
    rules_of = {pair: {rule for _node, rule, *_ in found} for pair, (_workflow, found) in verdicts.items()}
    assert set().union(*rules_of.values()) == set(all_rules()) - {"lora.loader"}, \
        "the sweep must trip every rule a shipped family can"
    traits = {pair: {("family", pair[0]), ("chain", pair[1])} | rules_of[pair] for pair in verdicts}
    wanted, covered, asked = set().union(*traits.values()), set(), []
    while covered != wanted:
        pair = max(verdicts, key=lambda p: (len(traits[p] - covered), p))
        asked.append(pair)
        covered |= traits[pair]
    for pair in asked:
        workflow, found = verdicts[pair]
        assert rule_problems_of_route(workflow) == found, pair
    assert len(asked) < len(verdicts) / 4


def test_other_packs_nodes_are_left_to_comfyui_and_loaders_show_what_their_model_supports(headless):
    workflow = base_workflow("qwen-image", [("OmniApplyTeaCache", {})])
    foreign = {"id": 99, "type": "SomeOtherPack_Upscale", "mode": 0, "inputs": [], "outputs": [],
               "widgets_values": ["whatever", 3]}
    note = {"id": 98, "type": "Note", "mode": 0, "widgets_values": ["hello"]}
    workflow = copy.deepcopy(workflow)
    workflow["nodes"] += [foreign, note]
    body, status = answer(workflow)
    assert status == 200 and body["problems"] == {}
    loader = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "OmniLoadModel")
    lines = body["support"][loader]
    assert lines[0].startswith("Qwen-Image: TeaCache, Cache-DiT, Seq Parallel (ulysses 2, 4; ring any)")
    assert "CFG-Parallel" in lines[0]


def test_a_problem_the_graph_introduces_is_answered_at_its_node(headless):
    workflow = base_workflow("sd3", [("OmniApplyTeaCache", {})])
    body, _status = answer(workflow)
    [(node, problems)] = body["problems"].items()
    teacache = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "OmniApplyTeaCache")
    assert node == teacache and problems[0]["rule"] == "teacache.family"
    assert "no TeaCache extractor" in problems[0]["problem"] and "Apply Cache-DiT" in problems[0]["fix"]
    loader = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "OmniLoadModel")
    assert body["support"][loader][1].startswith("not supported: TeaCache")


@pytest.mark.parametrize("posted", [None, [], {"nodes": "x"}, "text"])
def test_a_malformed_post_gets_a_clear_400(posted):
    body, status = answer(posted)
    assert status == 400 and "serializes" in body["error"]


def test_a_node_this_version_of_the_pack_lacks_is_named_with_the_way_out(headless):
    workflow = copy.deepcopy(base_workflow("qwen-image"))
    workflow["nodes"].append({"id": 97, "type": "OmniFromANewerPack", "mode": 0, "inputs": [], "outputs": [],
                              "widgets_values": []})
    body, status = answer(workflow)
    assert status == 200
    [problem] = body["problems"]["97"]
    assert "OmniFromANewerPack" in problem["problem"] and "update the pack" in problem["fix"]
