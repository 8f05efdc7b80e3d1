"""What the host process keeps over many multi-process runs and group rebuilds.

    python benchmarks/worker_memory.py --json
    {"runs": 50, "rebuilds": 10, "host_rss_growth_mb": ..., "fds_growth": ..., "listening_sockets_growth": ...,
     "worker_folders_growth": ...}

A 2-rank layout (VAE patch-parallel 2) of the reference model decodes a 512 px image `--runs`
times after a warm-up; then the group is rebuilt `--rebuilds` times (a layout change, as when a
user edits Parallel Config), and finally unloaded. Growth is measured from the warm state (workers
up, weights loaded, one decode done) to the end of the runs (memory) and of the rebuilds (one group
up again): resident memory of this (the host) process, its open file descriptors, its listening TCP
sockets, and `omni-workers-*` folders in the temp directory. `left_after_unload` compares the state
after Unload with the state before the first group started (all 0 when nothing leaks).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
from pathlib import Path

import torch
from _common import ROOT  # noqa: F401  (offline mode and the pack on sys.path)

from omni_backend.engine import Engine
from omni_backend.parallel.config import ParallelConfig
from omni_backend.reference import model_path
from omni_backend.spec import ModelSpec
from omni_backend.system.process_probe import listening_ports


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def worker_folders() -> int:
    return len(list(Path(tempfile.gettempdir()).glob("omni-workers-*")))


def snapshot() -> dict:
    gc.collect()
    return {"rss": rss_mb(), "fds": open_fds(), "listening": len(listening_ports()), "folders": worker_folders()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rebuilds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base = ModelSpec.from_folder(str(model_path()), dtype="fp32", device="cpu")
    layouts = [ParallelConfig(cfg_parallel=2, vae_patch_parallel=2),
               ParallelConfig(ulysses_degree=2, vae_patch_parallel=2)]
    latents = torch.randn(1, 16, 64, 64, generator=torch.Generator().manual_seed(0))  # 512 px after decoding
    engine = Engine()
    cold = snapshot()  # no group yet
    spec = base.replace(parallel=layouts[0])
    engine.decode(spec, latents)  # warm: workers up, weights loaded
    warm = snapshot()
    for _ in range(args.runs):
        pixels = engine.decode(spec, latents)
    assert pixels.shape[-1] == 512
    after_runs = snapshot()
    for index in range(args.rebuilds):  # ends on the first layout again: one group up, as when warm
        engine.decode(base.replace(parallel=layouts[(index + 1) % 2]), latents)
    after_rebuilds = snapshot()
    engine.unload_all()
    unloaded = snapshot()
    row = {"runs": args.runs, "rebuilds": args.rebuilds,
           "host_rss_growth_mb": round(after_runs["rss"] - warm["rss"], 1),
           "host_rss_growth_after_rebuilds_mb": round(after_rebuilds["rss"] - warm["rss"], 1),
           "fds_growth": after_rebuilds["fds"] - warm["fds"],
           "listening_sockets_growth": after_rebuilds["listening"] - warm["listening"],
           "worker_folders_growth": after_rebuilds["folders"] - warm["folders"],
           "left_after_unload": {key: unloaded[key] - cold[key] for key in ("fds", "listening", "folders")}}
    print(json.dumps(row) if args.json else "\n".join(f"{key}: {value}" for key, value in row.items()))


if __name__ == "__main__":
    main()
