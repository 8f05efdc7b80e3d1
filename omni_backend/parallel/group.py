"""The host side of multi-process runs: start the worker ranks, send them requests, watch them.

Workers stay up between runs and load weights themselves; the group is rebuilt only when the
process layout changes, or after a failure (a dead or failing rank tears the whole group down,
so the next run starts clean instead of waiting on a broken collective).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import OmniInterrupted, OmniWorkerError
from .channel import Channel, connect

log = logging.getLogger("omni_diffusion")
READY_TIMEOUT_LOCAL = 180.0  # seconds for local ranks to import torch and join
READY_TIMEOUT_REMOTE = 600.0
_GENERATIONS = itertools.count(1)
_STORES: dict[tuple[str, int], object] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _store(address: str):
    """One store per address for the life of the process: remote ranks keep their connection."""
    if address:
        host, port = address.rsplit(":", 1)
        key = ("0.0.0.0" if host not in ("127.0.0.1", "localhost") else host, int(port))
    else:
        key = ("127.0.0.1", _free_port())
    if key not in _STORES:
        _STORES[key] = connect(key[0], key[1], is_host=True)
    return key, _STORES[key]


def local_devices(config) -> list[str]:
    import torch

    if config.devices:
        return list(config.devices)
    if torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(config.local_ranks)]
    return ["cpu"] * config.local_ranks


class WorkerGroup:
    def __init__(self, config):
        self.config = config
        self.generation = next(_GENERATIONS)
        (self.host, self.port), store = _store(config.rendezvous)
        self.channel = Channel(store, self.generation)
        self.logs = Path(tempfile.mkdtemp(prefix="omni-workers-"))
        self.processes: list[subprocess.Popen] = []
        self.requests = 0
        self.closed = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # ---- lifecycle -------------------------------------------------------------------------------
    def _start(self) -> None:
        config = self.config
        self.channel.put("layout", config)
        self.channel.store.set("generation", str(self.generation))
        devices = local_devices(config)
        threads = max(1, (os.cpu_count() or 1) // max(1, config.local_ranks))
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("HF_HUB_OFFLINE", "1")
        for rank in range(config.local_ranks):
            log_file = open(self.logs / f"rank{rank}.log", "w")  # noqa: SIM115 - owned by the process
            command = [sys.executable, "-m", "omni_backend.parallel.worker", "--rank", str(rank),
                       "--world-size", str(config.world_size), "--master", f"127.0.0.1:{self.port}",
                       "--device", devices[rank], "--generation", str(self.generation), "--threads", str(threads)]
            self.processes.append(subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + (READY_TIMEOUT_REMOTE if config.remote_ranks else READY_TIMEOUT_LOCAL)
        for rank in range(config.world_size):
            while not self.channel.has(f"ready/{rank}"):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise OmniWorkerError(self._join_timeout_message(rank))
                time.sleep(0.05)
        log.info("worker group %d ready: %s", self.generation, config.describe())

    def _join_timeout_message(self, rank: int) -> str:
        if rank >= self.config.local_ranks:
            return (f"rank {rank} never joined the group at {self.config.rendezvous}; start it on its machine "
                    f"with: omni-diffusion worker --rank {rank} --world-size {self.config.world_size} "
                    f"--master {self.config.rendezvous}")
        return f"local rank {rank} did not start in time; its log:\n{self._log_tail(rank)}"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.requests += 1
            self.channel.put(f"request/{self.requests}", ("shutdown", None))
        except Exception:  # noqa: BLE001 - the store may already be gone at interpreter exit
            pass
        deadline = time.monotonic() + 5
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ---- requests ----------------------------------------------------------------------------------
    def call(self, kind: str, payload, control):
        """Send a request to every rank and wait for rank 0's answer, relaying progress and stops."""
        if self.closed:
            raise OmniWorkerError("the worker group was shut down")
        self.requests += 1
        number = self.requests
        self.channel.put(f"request/{number}", (kind, payload))
        stop_sent = False
        last_progress = None

        def relay_progress():
            nonlocal last_progress
            if self.channel.has(f"progress/{number}"):
                progress = self.channel.get(f"progress/{number}")
                if progress != last_progress:
                    last_progress = progress
                    control.report_progress(*progress)

        while True:
            if self.channel.has(f"result/{number}"):
                outcome = self.channel.get(f"result/{number}")
                relay_progress()  # the last step's progress lands just before the result
                break
            relay_progress()
            if not stop_sent and control.stop_requested():
                self.channel.put(f"stop/{number}", True)  # ranks agree on the step to stop at
                stop_sent = True
            try:
                self._check_alive()
            except OmniWorkerError:
                self.close()
                raise
            time.sleep(0.02)
        if outcome[0] == "ok":
            return outcome[1]
        if outcome[0] == "interrupted":
            raise OmniInterrupted("stopped by the user (all ranks stopped at the same step)")
        # Rank 0 often fails *because* another rank was killed (its collective lost the peer): give
        # that a moment to show, and name the killed rank rather than rank 0's lost connection.
        # (Ranks that exit with an error after rank 0's failure are its consequence, not its cause.)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            killed = [rank for rank, process in enumerate(self.processes) if (process.poll() or 0) < 0]
            if killed:
                message = self._death_message(killed[0])
                self.close()
                raise OmniWorkerError(f"{message}\n(rank 0 then failed with: {outcome[1]})")
            time.sleep(0.05)
        self.close()
        raise OmniWorkerError(f"{outcome[1]}\nThe worker group was shut down; the next run starts a new one.")

    def _check_alive(self) -> None:
        for rank, process in enumerate(self.processes):
            if process.poll() is not None:
                raise OmniWorkerError(self._death_message(rank))

    def _death_message(self, rank: int) -> str:
        code = self.processes[rank].poll()
        reason = self.channel.get(f"error/{rank}") if self.channel.has(f"error/{rank}") else None
        how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        return (f"worker rank {rank} {how}: {reason or self._log_tail(rank)}\nThe worker group was shut down; "
                "the next run starts a new one.")

    def _log_tail(self, rank: int, lines: int = 15) -> str:
        path = self.logs / f"rank{rank}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


class GroupExecutor:
    """Engine executor for world size > 1: one live WorkerGroup, rebuilt when the layout changes."""

    def __init__(self):
        self.group: WorkerGroup | None = None
        atexit.register(self.shutdown)

    def for_spec(self, spec) -> "GroupExecutor":
        config = spec.parallel
        if self.group is None or self.group.closed or self.group.config.layout_key() != config.layout_key():
            self.shutdown()
            self.group = WorkerGroup(config)
        return self

    def generate(self, spec, request, control):
        return self.group.call("generate", (spec, request), control)

    def decode(self, spec, latents, settings):
        from ..sampling import RunControl

        return self.group.call("decode", (spec, latents, settings), RunControl())  # (pixels, report) of rank 0

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None
