"""`omni-diffusion validate`: shipped workflows are valid; broken ones name the right node; no weights load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from omni_diffusion_nodes.headless import cli
from omni_diffusion_nodes.headless.validate import validate_file

PACK_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
FIXTURES = PACK_ROOT / "tests" / "workflow_fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())["expected"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_shipped_workflow_is_valid(headless, path, capsys):
    assert cli.main(["validate", str(path), "--models-dir", str(headless.models_dir)]) == 0
    assert capsys.readouterr().out == "valid\n"


def matches(problem, wanted: dict) -> bool:
    if problem.node_id != wanted["node"]:
        return False
    return problem.rule == wanted["rule"] if "rule" in wanted else (not problem.rule
                                                                    and wanted["contains"] in problem.problem)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_reports_the_right_nodes(headless, name):
    problems = validate_file(FIXTURES / name, models_dir=headless.models_dir)
    wanted = EXPECTED[name]
    for entry in wanted:
        assert any(matches(p, entry) for p in problems), f"{entry} not in {[str(p) for p in problems]}"
    assert {p.node_id for p in problems} == {entry["node"] for entry in wanted}, [str(p) for p in problems]
    rule_problems = sorted((p.node_id, p.rule) for p in problems if p.rule)
    assert rule_problems == sorted((e["node"], e["rule"]) for e in wanted if "rule" in e)


def test_cli_prints_one_line_per_problem_and_exits_1(headless, capsys):
    path = FIXTURES / "problems-on-two-nodes.json"
    assert cli.main(["validate", str(path), "--models-dir", str(headless.models_dir)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("node 2 (Apply TeaCache): Apply TeaCache cannot be combined with Wan2.2-T2V: ")
    supported = lines[0].split(". Fix: use Apply Cache-DiT instead (TeaCache supports: ")[1]
    assert {"Qwen-Image", "Z-Image", "FLUX.1-dev"} <= set(supported.rstrip(")").split(", "))
    assert lines[1].startswith("node 3 (Parallel Config): Parallel Config (3 ranks (ulysses 3)) cannot be combined")


def test_not_a_workflow_is_one_problem_line(headless, tmp_path, capsys):
    path = tmp_path / "notes.json"
    path.write_text('{"hello": 1}')
    assert cli.main(["validate", str(path), "--models-dir", str(headless.models_dir)]) == 1
    assert capsys.readouterr().out.startswith("node - (notes.json): not a ComfyUI workflow")


def test_validation_reads_no_weights(headless, models_dir, tmp_path):
    """A model whose weight files are garbage validates (configs are fine) and then fails to run."""
    models = tmp_path / "models"
    shutil.copytree(models_dir / "diffusers" / "qwen-image", models / "diffusers" / "Qwen-Image")
    for weights in (models / "diffusers" / "Qwen-Image").rglob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    (models / "loras").mkdir()
    workflow = PACK_ROOT / "workflows" / "qwen-image-teacache.json"
    assert validate_file(workflow, models_dir=models) == []
    from omni_diffusion_nodes.headless.executor import NodeExecutionError
    from omni_diffusion_nodes.headless.runner import run_workflow

    with pytest.raises(NodeExecutionError) as info:
        run_workflow(workflow, models_dir=models)
    assert info.value.class_type == "OmniSampleV2", "weights are first read when Sample runs"
