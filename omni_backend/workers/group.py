"""The host side of multi-process runs: start the worker ranks, send them requests, watch them.

Each rank holds one authenticated connection to the host (connection.py). The host listens only
while the group forms: on 127.0.0.1 for local ranks, on the rendezvous address when the user asks
for remote ranks. Local ranks get a fresh random secret on their stdin; remote ranks prove the
secret the user set (OMNI_WORKER_SECRET). Whoever reaches that port can connect, so peers are
authenticated side by side (a thread each, at most MAX_PENDING at once, ADMISSION_TIMEOUT each): a
peer that stalls or fails is dropped and counted while the others go on, and a group that still
cannot form says so. torch.distributed meets through the host: each rank opens a second
authenticated connection for its store (rendezvous.py), so no port answers without the secret
(torch's TCPStore would answer anyone).

Workers stay up between runs and load weights themselves; the group is rebuilt only when the
process layout changes, or after a failure (a dead or failing rank tears the whole group down, so
the next run starts clean instead of waiting on a broken collective). Closing a group ends its
processes and frees everything it opened: sockets, process handles, log files, its folder.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import socket
import tempfile
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path

from ..errors import OmniInterrupted, OmniWorkerError
from ..parallel.config import rendezvous_address
from ..run.sampling import RunControl
from .connection import (
    ADMISSION_TIMEOUT,
    AuthenticationFailed,
    ConnectionClosed,
    accept,
    listen,
    remote_secret,
)
from .rendezvous import HostStore

log = logging.getLogger("omni_diffusion")
READY_TIMEOUT_LOCAL = 180.0  # seconds for local ranks to import torch and join
READY_TIMEOUT_REMOTE = 600.0
WATCH_INTERVAL = 0.1  # seconds between looks at the user's Cancel while waiting on the ranks
ABANDON_TIMEOUT = 10.0  # seconds the ranks get to stop a run the host gave up on
MAX_PENDING = 32  # connections authenticated at once; later ones wait in the listen backlog
REFUSALS_KEPT = 20  # refusals logged and kept as text; the rest are only counted


def local_devices(config) -> list[str]:
    import torch

    if config.devices:
        return list(config.devices)
    if torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(config.local_ranks)]
    return ["cpu"] * config.local_ranks


def _process_handle(process: subprocess.Popen):
    """A file descriptor that becomes readable when the process ends (None where the OS has none)."""
    try:
        return os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return None


class WorkerGroup:
    def __init__(self, config, control=None):
        self.config = config
        self.folder = Path(tempfile.mkdtemp(prefix="omni-workers-"))  # 0700: only this user reads it
        self.processes: list[subprocess.Popen] = []
        self.handles: dict[int, int] = {}  # pidfd -> local rank
        self.connections: dict[int, object] = {}  # rank -> Connection
        self.errors: dict[int, str] = {}  # rank -> the failure it reported
        self.refused: list[str] = []  # connections that failed authentication or asked for a wrong rank
        self.refusals = 0  # all of them, also those past REFUSALS_KEPT
        self.unauthenticated = 0  # connections dropped because they did not authenticate (in time)
        self.pending: dict[socket.socket, threading.Thread] = {}  # connections being authenticated
        self.admissions: queue.Queue = queue.Queue()  # (socket, outcome) from the authenticating threads
        self.admissions_ended = False  # every rank is in: the authentications still under way are cut short
        self.wake_reader, self.wake_writer = socket.socketpair()  # an admission outcome is waiting
        self.listener = None
        self.store_connections: dict[int, object] = {}  # rank -> its connection for the rendezvous store
        self.store = HostStore()  # the keys torch.distributed meets by
        self.outcome_of_abandoned_run = None  # "stopped" | "ended" once the host stopped waiting mid-run
        self.closed = False
        try:
            self._start(control)
        except BaseException:
            self.close()
            raise

    # ---- start-up --------------------------------------------------------------------------------
    def _start(self, control) -> None:
        config = self.config
        local_secret = secrets.token_bytes(32)
        self.secrets = {"local": local_secret}
        if config.remote_ranks:
            self.secrets["remote"] = remote_secret()
            host, port = rendezvous_address(config.rendezvous)
            self.listener = listen(host, port)
        else:
            self.listener = listen("127.0.0.1", 0)
        self.port = self.listener.getsockname()[1]
        self._spawn_local_ranks(local_secret)
        deadline = time.monotonic() + (READY_TIMEOUT_REMOTE if config.remote_ranks else READY_TIMEOUT_LOCAL)
        if config.remote_ranks:
            log.warning("waiting up to %.0f s for remote ranks at %s (Cancel stops waiting): %s", READY_TIMEOUT_REMOTE,
                        config.rendezvous, self._join_timeout_message())
        try:
            while len(self.connections) < config.world_size or len(self.store_connections) < config.world_size:
                self._watch_start(control, deadline, accepting=True)
            self.listener.close()  # every rank is in: nobody else may connect
            self.listener = None
            self._end_admissions()
            ready: set[int] = set()
            while len(ready) < config.world_size:
                for rank, message in self._watch_start(control, deadline, accepting=False):
                    if message.get("kind") == "ready":
                        ready.add(rank)
        except OmniWorkerError as exc:
            trouble = self._admission_trouble()
            if not trouble:
                raise
            text, shut, tail = str(exc).partition("\nThe worker group was shut down")
            raise OmniWorkerError(f"{text}{trouble}{shut}{tail}") from None
        if self.unauthenticated:
            log.warning("worker group: %d connection(s) that did not authenticate were dropped while it formed",
                        self.unauthenticated)
        log.info("worker group ready: %s", config.describe())

    def _spawn_local_ranks(self, secret: bytes) -> None:
        config = self.config
        devices = local_devices(config)
        threads = max(1, (os.cpu_count() or 1) // max(1, config.local_ranks))
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("HF_HUB_OFFLINE", "1")
        if not config.remote_ranks and sys.platform.startswith("linux"):
            # Ranks on one machine talk over loopback only (the collectives' own sockets too).
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
            env.setdefault("NCCL_SOCKET_IFNAME", "lo")
        for rank in range(config.local_ranks):
            command = [sys.executable, "-m", "omni_backend.workers.worker", "--rank", str(rank),
                       "--world-size", str(config.world_size), "--master", f"127.0.0.1:{self.port}",
                       "--device", devices[rank], "--threads", str(threads), "--local"]
            with open(self.folder / f"rank{rank}.log", "wb") as log_file:
                # A session of their own: a Ctrl-C in the terminal reaches the host, which stops them.
                process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log_file,
                                           stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.processes.append(process)
            process.stdin.write(secret.hex().encode() + b"\n")  # never on the command line: `ps` shows that
            process.stdin.close()
            handle = _process_handle(process)
            if handle is not None:
                self.handles[handle] = rank

    def _watch_start(self, control, deadline: float, accepting: bool) -> list:
        if control is not None and control.stop_requested():
            raise OmniInterrupted("stopped by the user while the worker group was starting")
        if time.monotonic() > deadline:
            raise OmniWorkerError(self._join_timeout_message())
        waitables = (list(self.connections.values()) + list(self.store_connections.values()) + list(self.handles)
                     + [self.wake_reader])
        if accepting and len(self.pending) < MAX_PENDING:
            waitables.append(self.listener)
        messages = []
        for ready in wait(waitables, timeout=WATCH_INTERVAL):
            if ready is self.listener:
                self._admit()
            elif ready is self.wake_reader:
                self.wake_reader.recv(4096)
                self._take_admissions()
            elif self._serve_store(ready):
                pass
            elif isinstance(ready, int):
                raise OmniWorkerError(self._death_message(self.handles[ready]))
            else:
                rank = self._rank_of(ready)
                messages.append((rank, self._receive(rank)))
        return messages

    def _admit(self) -> None:
        """Take one connection off the listener and authenticate it on a thread of its own, so that
        a peer that never answers holds up nobody (it is dropped after ADMISSION_TIMEOUT)."""
        try:
            sock, address = self.listener.accept()
        except OSError:  # gone again before we took it
            return
        where = f"{address[0]}:{address[1]}"
        thread = threading.Thread(target=self._authenticate, args=(sock, where), daemon=True,
                                  name=f"omni-admit-{where}")
        self.pending[sock] = thread
        thread.start()

    def _authenticate(self, sock: socket.socket, where: str) -> None:
        """(its own thread) The handshake and the greeting, both by one deadline; the outcome goes to
        the main thread, which alone decides who joins."""
        deadline = time.monotonic() + ADMISSION_TIMEOUT
        try:
            connection, secret_name = accept(sock, self.secrets, deadline)
        except AuthenticationFailed as exc:
            sock.close()
            if self.admissions_ended:  # our own shutdown woke it: the peer had simply not proved itself yet
                exc = "it had not authenticated when every rank had joined"
            outcome = ("unauthenticated", f"a connection from {where} was refused: {exc}")
        else:
            try:
                hello = connection.recv(deadline)
                purpose = {"hello": "requests", "store": "store"}[hello["kind"]]
                outcome = ("hello", connection, secret_name, purpose, int(hello["rank"]), int(hello["world_size"]),
                           where)
            except socket.timeout:
                connection.close()
                outcome = ("refused", f"a worker at {where} sent no greeting within {ADMISSION_TIMEOUT:.0f} s")
            except (ConnectionClosed, AuthenticationFailed, KeyError, TypeError, ValueError, OSError) as exc:
                connection.close()
                outcome = ("refused", f"a worker at {where} sent no valid greeting ({exc})")
        self.admissions.put((sock, outcome))
        try:
            self.wake_writer.send(b"!")
        except OSError:  # the group was closed meanwhile: close() collects the outcome itself
            pass

    def _take_admissions(self) -> None:
        while True:
            try:
                sock, outcome = self.admissions.get_nowait()
            except queue.Empty:
                return
            self.pending.pop(sock, None)
            if outcome[0] == "hello":
                self._seat(*outcome[1:])
            else:
                if outcome[0] == "unauthenticated":
                    self.unauthenticated += 1
                self._refuse(outcome[1])

    def _seat(self, connection, secret_name: str, purpose: str, rank: int, world_size: int, where: str) -> None:
        """Give an authenticated worker its part, or refuse it and report why. Each rank opens two
        connections: one for requests ("hello"), then one for its rendezvous store ("store")."""
        config = self.config
        local = range(config.local_ranks)
        remote = range(config.local_ranks, config.world_size)
        slots = local if secret_name == "local" else remote
        problem = None
        if world_size != config.world_size:
            problem = f"this group has world size {config.world_size}, the worker was started with {world_size}"
        elif rank not in slots:
            problem = (f"rank {rank} is not a {'local' if secret_name == 'local' else 'remote'} rank of this group "
                       f"(those are {list(slots)})")
        elif purpose == "requests" and rank in self.connections:
            problem = f"rank {rank} has already joined"
        elif purpose == "store" and (rank not in self.connections or rank in self.store_connections):
            problem = f"rank {rank} {'has not joined' if rank not in self.connections else 'has its store already'}"
        elif self.listener is None or self.closed:
            problem = "every rank has already joined"
        try:
            if problem:
                connection.send({"kind": "refused", "reason": problem})
            elif purpose == "store":
                connection.send({"kind": "store-open"})
            else:
                connection.send({"kind": "setup", "layout": config, "store": {"channel": True}})
        except OSError as exc:
            problem = problem or f"it went away ({exc})"
        if problem:
            connection.close()
            self._refuse(f"the worker at {where} was refused: {problem}")
            return
        if purpose == "store":
            self.store_connections[rank] = connection
            return
        self.connections[rank] = connection
        log.info("rank %d joined from %s", rank, where)

    def _serve_store(self, ready) -> bool:
        """If `ready` is a rank's store connection, answer its request (now, or once the keys it
        waits for are set); False for anything else."""
        rank = next((rank for rank, c in self.store_connections.items() if c is ready), None)
        if rank is None:
            return False
        try:
            message = ready.recv()
        except (ConnectionClosed, OSError, AuthenticationFailed) as exc:
            if self.closed:
                return True
            raise OmniWorkerError(self._death_message(rank, lost=f"its store connection: {exc}")) from None
        if not isinstance(message, dict) or message.get("kind") != "store":
            raise OmniWorkerError(self._death_message(rank, lost="it sent a malformed store message"))
        for to, answer in self.store.handle(rank, message):
            try:
                self.store_connections[to].send(answer)
            except OSError as exc:
                raise OmniWorkerError(self._death_message(to, lost=f"its store connection: {exc}")) from None
        return True

    def _end_admissions(self) -> None:
        """Stop the authentications still under way (their peers are dropped) and collect them."""
        self.admissions_ended = True
        for sock in list(self.pending):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes the socket itself
            except OSError:
                pass
        for thread in list(self.pending.values()):
            thread.join(timeout=2.0)
        self._take_admissions()

    def _admission_trouble(self) -> str:
        """What the connections that never authenticated did to the start-up, for its error message."""
        silent = len(self.pending)
        if not (self.unauthenticated or silent):
            return ""
        where = f"port {self.port}" if getattr(self, "port", None) else "the rendezvous port"
        parts = []
        if self.unauthenticated:
            parts.append(f"{self.unauthenticated} dropped after failing or stalling for {ADMISSION_TIMEOUT:.0f} s")
        if silent:
            parts.append(f"{silent} still silent when it failed")
        count = self.unauthenticated + silent
        return (f"\nWhile the group formed, {count} connection{'s' if count != 1 else ''} to {where} did not "
                f"authenticate ({', '.join(parts)}); another process on this machine (or network) may be "
                "holding the rendezvous port busy.")

    def _refuse(self, text: str) -> None:
        self.refusals += 1
        if self.refusals <= REFUSALS_KEPT:
            self.refused.append(text)
            log.warning("worker group: %s", text)
        elif self.refusals == REFUSALS_KEPT + 1:
            log.warning("worker group: more connections were refused; they are counted, not logged")

    def _join_timeout_message(self) -> str:
        config = self.config
        missing = [rank for rank in range(config.world_size) if rank not in self.connections]
        remote = [rank for rank in missing if rank >= config.local_ranks]
        if remote:
            commands = "; ".join(f"omni-diffusion worker --rank {rank} --world-size {config.world_size} "
                                 f"--master {config.rendezvous}" for rank in remote)
            return (f"rank {', '.join(map(str, remote))} never joined the group at {config.rendezvous}; start it "
                    f"on its machine (with the same OMNI_WORKER_SECRET) with: {commands}")
        if missing:
            return f"local rank {missing[0]} did not start in time; its log:\n{self._log_tail(missing[0])}"
        return "the ranks joined but did not finish setting up torch.distributed in time"

    # ---- requests ----------------------------------------------------------------------------------
    def call(self, kind: str, payload: dict, control):
        """Send a request to every rank and wait for rank 0's answer, relaying progress and stops."""
        if self.closed:
            raise OmniWorkerError("the worker group was shut down")
        try:
            for connection in self.connections.values():
                connection.send({"kind": kind, **payload})
            outcome = self._watch_run(control)
        except OmniWorkerError:
            self.close()
            raise
        except BaseException:  # e.g. KeyboardInterrupt in the host: stop the ranks, do not leave them busy
            self._abandon_run()
            raise
        if outcome["status"] == "ok":
            return outcome["value"]
        if outcome["status"] == "interrupted":
            raise OmniInterrupted("stopped by the user (all ranks stopped at the same step)")
        self._fail_after_rank0_error(outcome["text"])

    def _watch_run(self, control, stop_sent: bool = False) -> dict:
        rank0 = self.connections[0]
        while True:
            waitables = list(self.connections.values()) + list(self.store_connections.values()) + list(self.handles)
            for ready in wait(waitables, timeout=WATCH_INTERVAL):
                if self._serve_store(ready):  # NCCL meets through the store at a run's first collective
                    continue
                if isinstance(ready, int):
                    raise OmniWorkerError(self._death_message(self.handles[ready]))
                rank = self._rank_of(ready)
                message = self._receive(rank)
                if ready is rank0 and message.get("kind") == "progress":
                    control.report_progress(int(message["step"]), int(message["total"]))
                elif ready is rank0 and message.get("kind") == "result":
                    return message
            if not stop_sent and control.stop_requested():
                rank0.send({"kind": "stop"})  # the ranks agree on the step to stop at
                stop_sent = True

    def _abandon_run(self) -> None:
        """The host stopped waiting mid-run: have the ranks stop at the next step, or end them."""
        if self.closed:
            return
        try:
            self.connections[0].send({"kind": "stop"})
            deadline = time.monotonic() + ABANDON_TIMEOUT

            class GiveUp:
                def report_progress(self, *_):
                    if time.monotonic() > deadline:
                        raise TimeoutError

                def stop_requested(self):
                    return time.monotonic() > deadline

            self._watch_run(GiveUp(), stop_sent=True)
            self.outcome_of_abandoned_run = "stopped"
        except BaseException:  # noqa: BLE001 - the ranks did not stop in time, or died: end the group
            self.outcome_of_abandoned_run = "ended"
            self.close()

    def _receive(self, rank: int) -> dict:
        try:
            message = self.connections[rank].recv()
        except (ConnectionClosed, OSError, AuthenticationFailed) as exc:
            raise OmniWorkerError(self._death_message(rank, lost=str(exc))) from None
        if not isinstance(message, dict):
            raise OmniWorkerError(self._death_message(rank, lost="it sent a malformed message"))
        if message.get("kind") == "error":
            self.errors[rank] = str(message.get("text"))
        return message

    def _rank_of(self, connection) -> int:
        return next(rank for rank, c in self.connections.items() if c is connection)

    def _fail_after_rank0_error(self, text: str):
        # Rank 0 often fails *because* another rank was killed (its collective lost the peer): give
        # that a moment to show, and name the killed rank rather than rank 0's lost connection.
        # (Ranks that exit with an error after rank 0's failure are its consequence, not its cause.)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            killed = [rank for rank, process in enumerate(self.processes) if (process.poll() or 0) < 0]
            if killed:
                message = self._death_message(killed[0])
                self.close()
                raise OmniWorkerError(f"{message}\n(rank 0 then failed with: {text})")
            time.sleep(0.05)
        self.close()
        raise OmniWorkerError(f"{text}\nThe worker group was shut down; the next run starts a new one.")

    # ---- failures ----------------------------------------------------------------------------------
    def _death_message(self, rank: int, lost: str = "") -> str:
        reason = self.errors.get(rank)
        if rank < len(self.processes):
            try:
                code = self.processes[rank].wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                code = None
            if code is None:
                how = f"stopped answering ({lost or 'no reason given'})"
            elif code >= 0:
                how = f"exited with code {code}"
            else:
                how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
            detail = reason or self._log_tail(rank)
        else:
            how = f"(on another machine) disconnected{f' ({lost})' if lost else ''}"
            detail = reason or "see that worker's terminal"
        return (f"worker rank {rank} {how}: {detail}\nThe worker group was shut down; "
                "the next run starts a new one.")

    def _log_tail(self, rank: int, lines: int = 15) -> str:
        path = self.folder / f"rank{rank}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"

    # ---- shutdown ----------------------------------------------------------------------------------
    def close(self) -> None:
        """End the ranks and free all the group holds. Safe to call twice, and at interpreter exit."""
        if self.closed:
            return
        self.closed = True
        for connection in self.connections.values():
            try:
                connection.send({"kind": "shutdown"})
            except Exception:  # noqa: BLE001 - a dead rank's socket is already gone
                pass
        deadline = time.monotonic() + 5
        for rank, process in enumerate(self.processes):
            if rank not in self.connections:
                process.kill()  # still starting (e.g. Cancel during start-up): it has nothing to finish
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for connection in [*self.connections.values(), *self.store_connections.values()]:
            connection.close()
        self._end_admissions()
        self.wake_reader.close()
        self.wake_writer.close()
        for handle in self.handles:
            os.close(handle)
        self.handles = {}
        if self.listener is not None:
            self.listener.close()
        self.listener = None
        shutil.rmtree(self.folder, ignore_errors=True)


class GroupExecutor:
    """Engine executor for world size > 1: one live WorkerGroup, rebuilt when the layout changes."""

    def __init__(self):
        self.group: WorkerGroup | None = None
        atexit.register(self.shutdown)

    def for_spec(self, spec, control=None) -> GroupExecutor:
        config = spec.parallel
        if self.group is None or self.group.closed or self.group.config.layout_key() != config.layout_key():
            self.shutdown()
            self.group = WorkerGroup(config, control)
        return self

    def generate(self, spec, request, control):
        return self.group.call("generate", {"spec": spec, "request": request}, control)

    def decode(self, spec, latents, settings):
        result = self.group.call("decode", {"spec": spec, "latents": latents, "settings": settings}, RunControl())
        return result["pixels"], result["report"]

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None
