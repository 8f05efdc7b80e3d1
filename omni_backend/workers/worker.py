"""A worker rank: joins the group, loads the weights itself, serves the host's requests.

Started by the host for local ranks (`python -m omni_backend.workers.worker ... --local`, the
group's secret on stdin), or by a user on another machine (`omni-diffusion worker --rank R
--world-size W --master HOST:PORT`, with OMNI_WORKER_SECRET set): then it waits for the host, and
rejoins each new group the host starts until it is stopped.
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
RECONNECT_INTERVAL = 2.0  # seconds between attempts to reach a host that is not there (yet)


class Refused(Exception):
    """The host turned this worker away (wrong rank or world size); the reason is its message."""


def join(host: str, port: int, secret: bytes, rank: int, world_size: int):
    """Connect, authenticate and ask for our rank; returns (connection, the host's setup message).

    The setup then holds the rank's second authenticated connection, the one its torch.distributed
    store speaks through (rendezvous.py), under "store_connection"."""
    from .connection import connect

    connection = connect(host, port, secret)
    try:
        connection.send({"kind": "hello", "rank": rank, "world_size": world_size})
        setup = connection.recv()
        if setup.get("kind") != "setup":
            raise Refused(str(setup.get("reason", "the host sent no set-up")))
        store_connection = connect(host, port, secret)
        try:
            store_connection.send({"kind": "store", "rank": rank, "world_size": world_size})
            answer = store_connection.recv()
            if answer.get("kind") != "store-open":
                raise Refused(str(answer.get("reason", "the host opened no store")))
        except BaseException:
            store_connection.close()
            raise
    except BaseException:
        connection.close()
        raise
    setup["store_connection"] = store_connection
    return connection, setup


def serve_group(connection, setup: dict, rank: int, world_size: int, device_name: str) -> None:
    """Join torch.distributed as `rank`, then run the host's requests until it ends the group."""
    import torch
    import torch.distributed as dist

    from ..errors import OmniInterrupted
    from ..parallel.runtime import build_context, set_current_context
    from ..run.runner import LocalRunner
    from ..run.sampling import RunControl
    from .connection import ConnectionClosed
    from .rendezvous import channel_store

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store_connection = setup["store_connection"]
    # Held here for the group's life: torch keeps only the C++ half, and calls into Python need this one.
    store = channel_store(store_connection)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.PrefixStore("pg/", store),
                                rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    except BaseException:
        store_connection.close()
        connection.close()
        raise
    runner = LocalRunner(max_loaded=1)
    try:
        set_current_context(build_context(rank, world_size, device, setup["layout"]))
        connection.send({"kind": "ready"})
        host = HostLink(connection)
        while not host.gone:
            try:
                request = connection.recv()
            except (ConnectionClosed, OSError):
                return  # the host went away: nothing more to serve
            kind = request.get("kind")
            if kind == "shutdown":
                return
            host.stop = False
            control = RunControl(progress=host.report_progress, interrupted=host.stop_requested) if rank == 0 \
                else RunControl()  # the other ranks follow rank 0's vote on stopping
            try:
                result = _handle(runner, kind, request, control)
                if rank == 0 and not host.gone:
                    connection.send({"kind": "result", "status": "ok", "value": result})
            except OmniInterrupted:
                if rank == 0 and not host.gone:
                    connection.send({"kind": "result", "status": "interrupted"})
            except Exception as exc:  # noqa: BLE001 - any failure must reach the host, then end this rank
                text = f"rank {rank}: {type(exc).__name__}: {exc}"
                traceback.print_exc()
                try:
                    connection.send({"kind": "result", "status": "error", "text": text} if rank == 0
                                    else {"kind": "error", "text": text})
                except OSError:
                    pass
                raise
    finally:
        set_current_context(None)
        runner.unload_all()
        dist.destroy_process_group()
        store_connection.close()
        connection.close()


class HostLink:
    """Rank 0's line to the host during a run: progress goes out, a stop comes in. A host that is
    gone counts as a stop, so that every rank leaves the run at the same step."""

    def __init__(self, connection):
        self.connection = connection
        self.stop = False
        self.gone = False

    def stop_requested(self) -> bool:
        from .connection import ConnectionClosed

        while not self.stop and self.connection.poll():
            try:
                self.stop = self.connection.recv().get("kind") == "stop"
            except (ConnectionClosed, OSError):
                self.gone = self.stop = True
        return self.stop

    def report_progress(self, step: int, total: int) -> None:
        try:
            self.connection.send({"kind": "progress", "step": step, "total": total})
        except OSError:
            self.gone = self.stop = True


def _handle(runner, kind: str, request: dict, control):
    if kind == "generate":
        return runner.generate(request["spec"], request["request"], control)
    if kind == "decode":
        pixels, report = runner.decode(request["spec"], request["latents"], request["settings"])
        return {"pixels": pixels, "report": report}
    raise ValueError(f"unknown request {kind!r}")


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog="omni-diffusion worker", description=__doc__)
    add_worker_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = automatic)")
    parser.add_argument("--local", action="store_true",
                        help="(set by the host for the ranks it starts) read the group's secret from stdin and "
                             "serve that one group")
    return parser.parse_args(argv)


def add_worker_arguments(parser) -> None:
    parser.add_argument("--rank", type=int, required=True, help="this worker's rank (rank 0 is ComfyUI's machine)")
    parser.add_argument("--world-size", type=int, required=True, help="the Parallel Config's world size")
    parser.add_argument("--master", required=True, help="HOST:PORT set as rendezvous in Parallel Config")
    parser.add_argument("--device", default="auto", help="cuda:N, cpu or auto")


def check_arguments(rank: int, world_size: int, master: str, local: bool) -> tuple[str, int]:
    """The same refusals for the CLI and the host's own ranks; returns the master's (host, port)."""
    from ..errors import OmniInputError
    from ..parallel.config import rendezvous_address

    if world_size < 2:
        raise OmniInputError("--world-size", world_size, "a worker group has at least 2 ranks",
                             "use the world size of the Parallel Config (ulysses x ring x cfg x tp)")
    lowest = 0 if local else 1
    if not lowest <= rank < world_size:
        raise OmniInputError("--rank", rank, f"ranks of a world of {world_size} run from {lowest} to {world_size - 1}"
                             + ("" if local else " (rank 0 is the ComfyUI machine)"),
                             f"use a rank from {lowest} to {world_size - 1}")
    try:
        return rendezvous_address(master)
    except OmniInputError as exc:
        raise OmniInputError("--master", master, exc.problem, exc.fix) from None


def main(argv=None) -> int:
    args = parse_arguments(argv)
    return run_worker(args.rank, args.world_size, args.master, args.device, args.threads, args.local)


def run_worker(rank: int, world_size: int, master: str, device: str, threads: int = 0, local: bool = False) -> int:
    from ..errors import OmniError
    from .connection import remote_secret

    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        host, port = check_arguments(rank, world_size, master, local)
        secret = bytes.fromhex(sys.stdin.readline().strip()) if local else remote_secret()
    except (OmniError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from ..system.devices import resolve_device
    from ..weights.loading import quiet_libraries

    quiet_libraries()
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    if local:
        from .connection import AuthenticationFailed

        try:
            connection, setup = join(host, port, secret, rank, world_size)
        except (OSError, AuthenticationFailed, Refused) as exc:
            # One plain line for the host to show (it quotes the end of this log), not a traceback.
            print(f"error: rank {rank} could not join the group at {host}:{port}: {exc or type(exc).__name__}",
                  file=sys.stderr, flush=True)
            return 1
        serve_group(connection, setup, rank, world_size, device)
        return 0
    try:
        return serve_forever(host, port, secret, rank, world_size, device)
    except KeyboardInterrupt:
        print("worker stopped", flush=True)
        return 130


def serve_forever(host: str, port: int, secret: bytes, rank: int, world_size: int, device: str) -> int:
    """A remote rank: wait for the host, serve its group, and wait again when the group ends."""
    from .connection import AuthenticationFailed

    said = None

    def say(text: str) -> None:
        nonlocal said
        if text != said:  # one line per change of state, not one per attempt
            print(text, flush=True)
            said = text

    while True:
        try:
            connection, setup = join(host, port, secret, rank, world_size)
        except AuthenticationFailed as exc:
            print(f"error: {exc}. Set the same OMNI_WORKER_SECRET here and on the ComfyUI machine.",
                  file=sys.stderr, flush=True)
            return 1
        except Refused as exc:
            say(f"the host at {host}:{port} did not take rank {rank}: {exc}; waiting for a group that needs it")
            time.sleep(RECONNECT_INTERVAL)
            continue
        except OSError:
            say(f"rank {rank}/{world_size} waiting for the host at {host}:{port}...")
            time.sleep(RECONNECT_INTERVAL)
            continue
        say(f"rank {rank}/{world_size} joined the group at {host}:{port}")
        try:
            serve_group(connection, setup, rank, world_size, device)
        except Exception:  # noqa: BLE001 - a failed group is the host's to report; wait for the next one
            traceback.print_exc()
        say(f"rank {rank}/{world_size}: the group ended; waiting for the next one")


if __name__ == "__main__":
    sys.exit(main())
