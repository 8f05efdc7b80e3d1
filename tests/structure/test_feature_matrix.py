"""The support matrix: every pair of vLLM-Omni's table has a verdict, its evidence exists, docs/compatibility.md shows it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from omni_backend.rules.feature_matrix import FEATURES, PAIR_VERDICTS, PARALLEL_FEATURES, render_markdown
from omni_backend.spec import all_rules

PACK_ROOT = Path(__file__).resolve().parents[2]
# vLLM-Omni's feature compatibility table: see tests/reference/README.md.
VLLM_OMNI_TABLE = Path(__file__).resolve().parents[1] / "reference" / "vllm-omni-feature-compatibility.md"
MATRIX_PAGE = PACK_ROOT / "docs" / "compatibility.md"
MATRIX_START, MATRIX_END = "<!-- feature-matrix:start -->", "<!-- feature-matrix:end -->"
TABLE_COLUMNS = {"TeaCache": "teacache", "Cache-DiT": "cache_dit", "Seq Parallel": "sequence_parallel",
                "Tensor Parallel": "tensor_parallel", "CFG-Parallel": "cfg_parallel", "LoRA Inference": "lora",
                "CPU Offloading": "offload", "FP8 Quantization": "fp8", "VAE Patch Parallel": "vae_patch_parallel"}


def test_every_pair_has_exactly_one_verdict():
    pairs = [frozenset(pair) for pair in PAIR_VERDICTS]
    assert len(pairs) == len(set(pairs)), "a pair is listed twice"
    assert set(pairs) == {frozenset(pair) for pair in itertools.combinations(FEATURES, 2)}


def table_cells() -> dict[frozenset, str]:
    """{pair: cell} from vLLM-Omni's Feature Compatibility table."""
    text = VLLM_OMNI_TABLE.read_text()
    table = text[text.index("## Feature Compatibility"):].split("\n\n")[2]
    rows = [[cell.strip(" *") for cell in line.strip("|").split("|")] for line in table.splitlines()]
    columns = [TABLE_COLUMNS[name] for name in rows[0][1:]]
    cells = {}
    for row in rows[2:]:
        for column, cell in zip(columns, row[1:]):
            if cell:
                cells[frozenset((TABLE_COLUMNS[row[0]], column))] = cell
    return cells


def test_every_unverified_vllm_omni_pair_is_run_or_refused_with_a_reason():
    cells = table_cells()
    assert len(cells) == 36 and list(cells.values()).count("❓") == 35
    for pair, cell in cells.items():
        verdict = PAIR_VERDICTS.get(tuple(sorted(pair, key=list(FEATURES).index, reverse=True)))
        assert verdict is not None, pair
        if cell == "❌":
            assert verdict.status == "refused", pair
        else:
            assert verdict.tested_by or verdict.rule, f"{sorted(pair)}: neither run nor refused"


def existing_test(test_id: str) -> bool:
    path, _, name = test_id.partition("::")
    function, _, param = name.partition("[")
    source = (PACK_ROOT / path).read_text()
    if not re.search(rf"^def {re.escape(function)}\(", source, flags=re.M):
        return False
    return not param or param.rstrip("]") in source or param.rstrip("]") in _parametrized_ids(path)


def _parametrized_ids(path: str) -> str:
    # ids made from workflow file names (test_workflows.py parametrizes over workflows/*.json)
    return " ".join(p.name for p in (PACK_ROOT / "workflows").glob("*.json")) if "test_workflows" in path else ""


@pytest.mark.parametrize("pair", list(PAIR_VERDICTS), ids=lambda pair: "x".join(pair))
def test_verdict_evidence_exists(pair):
    verdict = PAIR_VERDICTS[pair]
    assert verdict.status in ("supported", "partly", "refused")
    assert (verdict.status == "refused") == (not verdict.tested_by), "supported and partly name their tests"
    assert (verdict.status == "supported") == (not verdict.rule), "refused and partly name their rule"
    for test_id in verdict.tested_by:
        assert existing_test(test_id), f"{test_id} does not exist"
    if verdict.rule:
        between = set(all_rules()[verdict.rule].between)
        sides = [{feature} | ({"parallel"} if feature in PARALLEL_FEATURES else set()) for feature in pair]
        assert all(side & between for side in sides), f"{verdict.rule} is about {between}, not {pair}"


def test_docs_show_the_generated_matrix():
    page = MATRIX_PAGE.read_text()
    block = page[page.index(MATRIX_START) + len(MATRIX_START):page.index(MATRIX_END)]
    assert block.strip("\n") == render_markdown().strip("\n"), \
        "regenerate the matrix in docs/compatibility.md with `python -m omni_backend.rules.feature_matrix`"
