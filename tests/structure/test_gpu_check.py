"""benchmarks/gpu_check.py without a GPU: its one-line exit, and its checks' code on the CPU at small shapes.

The script's CUDA paths cannot run here; what can: that it leaves quietly without CUDA, that its
development mode (`--device cpu --small`) runs the engine functions each check calls and finds them
within tolerance, and that a check does fail when the path it compares is wrong.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PACK_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = PACK_ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    if "gpu_check" not in sys.modules:  # registered first: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


def run_script(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=300,
                          cwd=PACK_ROOT, check=False)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the exit of a machine without CUDA")
def test_without_cuda_it_prints_one_line_and_exits_0():
    plain = run_script()
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [load_script().NO_CUDA]
    as_json = run_script("--json")
    assert as_json.returncode == 0, as_json.stderr
    lines = as_json.stdout.splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["ok"] is None and "no CUDA GPU" in row["note"]


def run_main(monkeypatch, capsys, *flags: str) -> tuple[int, list[dict]]:
    """The script's main in this process (its imports are this session's already), as --json."""
    gpu_check = load_script()
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # main imports benchmarks/_common.py
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--json", *flags])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    return exit_.value.code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.slow
def test_the_cpu_development_mode_runs_every_check_within_its_tolerance(monkeypatch, capsys):
    code, found = run_main(monkeypatch, capsys, "--device", "cpu", "--small", "--repeats", "1",
                           "--attention-backends", "_native_math,flash")
    assert code == 0, found
    rows = {row["check"]: row for row in found}
    ran = ["ring.fused_flash", "ring.fused_efficient_masked", "ring.ring_attention_1_rank", "attention._native_math",
           "fp8.weight_only", "compile.aot_eager", "offload.layerwise"]
    assert sorted(rows) == sorted(ran + ["attention.flash", "fp8.w8a8"])
    for name in ran:
        row = rows[name]
        assert row["ok"] is True, row
        assert math.isfinite(row["max_abs_diff"]) and row["time_ratio"] > 0, row
    assert rows["offload.layerwise"]["max_abs_diff"] == 0
    assert rows["fp8.weight_only"]["max_abs_diff"] > 0  # FP8 did round: the comparison is not with itself
    assert rows["attention.flash"]["ok"] is None and "CUDA-only" in rows["attention.flash"]["note"]
    assert rows["fp8.w8a8"]["ok"] is None and "no fast FP8 matmul" in rows["fp8.w8a8"]["note"]


def test_a_log_sum_exp_in_the_wrong_base_fails_the_ring_check(monkeypatch):
    """What the ring check is for on a GPU: a fused kernel whose log-sum-exp is not the natural log of the
    scaled scores (flash kernels work in base 2 inside) merges shards wrongly; the check must say so."""
    from omni_backend.parallel import sp_attention

    gpu_check = load_script()
    bench = gpu_check.Bench(torch.device("cpu"), gpu_check.SMALL, repeats=1)
    assert gpu_check.ring_row(bench, "ring.fused_flash", False, "flash", 4).ok is True
    exact = sp_attention.local_attention

    def base_two(*args):
        out, lse = exact(*args)
        return out, lse / math.log(2)

    monkeypatch.setattr(sp_attention, "local_attention", base_two)
    row = gpu_check.ring_row(bench, "ring.fused_flash", False, "flash", 4)
    assert row.ok is False, row


def test_a_check_that_raises_is_a_failed_row_the_others_run_and_the_exit_code_is_1(monkeypatch, capsys):
    code, rows = run_main(monkeypatch, capsys, "--device", "cpu", "--small", "--repeats", "1", "--checks", "attention",
                          "--attention-backends", "no_such_backend,_native_math")
    assert code == 1
    assert [(row["check"], row["ok"]) for row in rows] == [("attention.no_such_backend", False),
                                                           ("attention._native_math", True)]
    assert "ValueError" in rows[0]["note"]
