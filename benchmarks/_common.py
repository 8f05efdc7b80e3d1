"""Shared set-up for the benchmarks: offline mode, the pack importable from this checkout, timing."""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if "omni_diffusion_nodes" not in sys.modules:
    try:
        import omni_diffusion_nodes  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location("omni_diffusion_nodes", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["omni_diffusion_nodes"] = module
        spec.loader.exec_module(module)

from omni_backend.weights.loading import quiet_libraries  # noqa: E402

quiet_libraries()


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def round_robin(candidates: dict, repeats: int) -> dict[str, float]:
    """Median seconds per candidate, alternating them so machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            times[name].append(timed(function))
    return {name: statistics.median(values) for name, values in times.items()}
