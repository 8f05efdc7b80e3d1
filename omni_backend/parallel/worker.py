"""A worker rank: joins the process group, loads the weights itself, serves the host's requests.

Started by the host for local ranks (`python -m omni_backend.parallel.worker ...`), or by a user on
another machine (`omni-diffusion worker --rank R --world-size W --master HOST:PORT`): then it
keeps rejoining each new group generation the host starts, until it is stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from datetime import timedelta

log = logging.getLogger("omni_diffusion")
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def serve_generation(store, generation: int, rank: int, world_size: int, device_name: str) -> None:
    import torch
    import torch.distributed as dist

    from ..engine import Engine
    from ..errors import OmniInterrupted
    from ..sampling import RunControl
    from .channel import Channel
    from .runtime import build_context, set_current_context

    channel = Channel(store, generation)
    config = channel.get("layout")
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=channel.process_group_store(),
                            rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    set_current_context(build_context(rank, world_size, device, config))
    channel.put(f"ready/{rank}", True)
    engine = Engine(max_loaded=1)
    number = 0
    try:
        while True:
            number += 1
            kind, payload = channel.wait(f"request/{number}", poll=0.02)
            if kind == "shutdown":
                return
            control = RunControl()
            if rank == 0:
                control = RunControl(
                    progress=lambda step, total, n=number: channel.put(f"progress/{n}", (step, total)),
                    interrupted=lambda n=number: channel.has(f"stop/{n}"))
            try:
                result = _handle(engine, kind, payload, control, rank)
                if rank == 0:
                    channel.put(f"result/{number}", ("ok", result))
            except OmniInterrupted:
                if rank == 0:
                    channel.put(f"result/{number}", ("interrupted",))
            except Exception as exc:  # noqa: BLE001 - any failure must reach the host, then end this rank
                text = f"rank {rank}: {type(exc).__name__}: {exc}"
                traceback.print_exc()
                channel.put(f"error/{rank}", text)
                if rank == 0:
                    channel.put(f"result/{number}", ("error", text))
                raise
    finally:
        set_current_context(None)
        engine.unload_all()
        dist.destroy_process_group()


def _handle(engine, kind: str, payload, control, rank: int):
    if kind == "generate":
        spec, request = payload
        generation = engine.generate(spec, request, control)
        return generation if rank == 0 else None
    if kind == "decode":
        spec, latents, settings = payload
        return engine.decode_with_report(spec, latents, settings)
    raise ValueError(f"unknown request {kind!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="omni-diffusion worker", description=__doc__)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--master", required=True, help="HOST:PORT of the ComfyUI machine's rendezvous")
    parser.add_argument("--device", default="auto", help="cuda:N, cpu, or auto")
    parser.add_argument("--generation", type=int, default=None,
                        help="(set by the host for the ranks it starts) serve this generation only")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = automatic)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[rank {args.rank}] %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from ..devices import resolve_device
    from ..loading import quiet_libraries
    from .channel import connect

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device if args.device != "auto" else "auto")
    host, port = args.master.rsplit(":", 1)
    store = connect(host, int(port), is_host=False)
    if args.generation is not None:
        serve_generation(store, args.generation, args.rank, args.world_size, device)
        return 0
    return serve_forever(store, args.rank, args.world_size, device)


def serve_forever(store, rank: int, world_size: int, device: str) -> int:
    """A remote rank: join every new generation whose world size matches ours."""
    served = -1
    print(f"rank {rank}/{world_size} waiting for the host...", flush=True)
    while True:
        try:
            generation = int(store.get("generation")) if store.check(["generation"]) else -1
        except Exception:  # the host went away: wait for it to come back
            time.sleep(2)
            continue
        if generation > served:
            from .channel import Channel

            layout = Channel(store, generation)
            if layout.has("layout") and layout.get("layout").world_size == world_size:
                served = generation
                print(f"joining group generation {generation}", flush=True)
                try:
                    serve_generation(store, generation, rank, world_size, device)
                except Exception:  # noqa: BLE001 - a failed generation is the host's to report
                    traceback.print_exc()
                print(f"generation {generation} ended", flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
