"""The worker group as an attacker and a user with faults would try it: no code from the wire,
nothing left behind, the behaviour a user expects when things go wrong."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from parallel_support import assert_same, request_for, spec_for

from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError, OmniInterrupted, OmniWorkerError
from omni_backend.run.runner import Generation
from omni_backend.run.sampling import RunControl, RunReport
from omni_backend.system.process_probe import listening_ports
from omni_backend.workers import group as group_module
from omni_backend.workers import wire
from omni_backend.workers.connection import (
    AuthenticationFailed,
    accept,
    connect,
    listen,
)
from omni_backend.workers.worker import run_worker

SECRET = "a-test-secret-of-32-characters!!"
PACK_ROOT = Path(__file__).resolve().parents[2]


class Exploit:
    """Unpickling this creates `marker`: the proof that a process ran code it was sent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_remote_worker(port: int, secret: str | None = SECRET, rank: int = 1, world_size: int = 2):
    env = dict(os.environ)
    env.pop("OMNI_WORKER_SECRET", None)
    if secret is not None:
        env["OMNI_WORKER_SECRET"] = secret
    return subprocess.Popen([sys.executable, "-m", "omni_diffusion_nodes.headless.cli", "worker", "--rank", str(rank),
                             "--world-size", str(world_size), "--master", f"127.0.0.1:{port}", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


# ---- the wire: plain data and tensors only ---------------------------------------------------------

def test_messages_carry_specs_requests_and_tensors_without_pickle(models_dir):
    spec = spec_for(models_dir, "qwen-image", ulysses_degree=2)
    report = RunReport()
    report.add("TeaCache", {"branches": {0: {"skipped": [1, 2]}}, "ratio": float("inf")})
    latents = torch.randn(1, 16, 6, 8)
    message = {"kind": "result", "value": Generation(latents=latents, family="qwen-image",
                                                     request=request_for("qwen-image"), report=report),
               "spec": spec, "shape": (1, 2)}
    data = wire.encode(message)
    assert b"\x80\x04" not in data[:16] and data.startswith(wire.MAGIC)
    back = wire.decode(data)
    assert back["spec"] == spec and back["shape"] == (1, 2)
    assert torch.equal(back["value"].latents, latents)
    assert back["value"].report.sections == report.sections  # int keys and infinities survive


@pytest.mark.parametrize("tree, fragment", [
    ('{"$":"dataclass","type":"Popen","v":{"args":"touch /tmp/x"}}', "not a type"),
    ('{"$":"dataclass","type":"ParallelConfig","v":{"__class__":1}}', "unknown fields"),
    ('{"$":"global","v":"os.system"}', "unknown tag"),
    ('{"kind": "result"}', "untagged"),
])
def test_decoding_builds_only_the_listed_types(tree, fragment):
    body = tree.encode()
    with pytest.raises(wire.WireError, match=fragment):
        wire.decode(wire.MAGIC + len(body).to_bytes(8, "big") + body)


def test_a_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(wire.WireError):
        wire.decode(pickle.dumps({"kind": "result", "value": Exploit(marker)}))
    assert not marker.exists()
    with pytest.raises(TypeError, match="cannot cross"):
        wire.encode({"value": Exploit(marker)})


# ---- the connection: authenticated both ways, frames that cannot be forged -------------------------

def _pair(host_secrets: dict, worker_secret: bytes):
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    accepted = {}

    def host_side():
        sock, _ = listener.accept()
        try:
            accepted["connection"], accepted["name"] = accept(sock, host_secrets)
        except AuthenticationFailed as exc:
            accepted["error"] = exc

    thread = threading.Thread(target=host_side)
    thread.start()
    try:
        worker = connect("127.0.0.1", port, worker_secret)
    finally:
        thread.join(10)
        listener.close()
    return worker, accepted


def test_a_peer_without_the_secret_is_refused_on_both_sides():
    with pytest.raises(AuthenticationFailed, match="refused"):
        _pair({"local": b"k" * 32}, b"wrong" * 8)


def test_frames_cannot_be_altered_or_replayed():
    worker, accepted = _pair({"local": b"k" * 32, "remote": b"r" * 32}, b"r" * 32)
    host = accepted["connection"]
    assert accepted["name"] == "remote", "the host knows which secret the peer proved"
    worker.send({"kind": "progress", "step": 1, "total": 2})
    assert host.recv() == {"kind": "progress", "step": 1, "total": 2}

    # A frame sent again (replayed) carries an old sequence number: refused.
    payload = wire.encode({"kind": "result", "status": "ok", "value": 1})
    from omni_backend.workers.connection import _mac

    mac = _mac(worker._key, b"w2h", (0).to_bytes(8, "big"), payload)
    worker.sock.sendall(len(payload).to_bytes(8, "big") + mac + payload)
    with pytest.raises(AuthenticationFailed):
        host.recv()
    worker.close()
    host.close()


# ---- the group: loopback only, a private folder, nothing left behind --------------------------------

@pytest.mark.slow
def test_a_local_group_listens_on_loopback_only_while_it_forms_and_leaves_nothing(models_dir):
    before_ports = listening_ports(os.getpid())
    before_fds = len(os.listdir("/proc/self/fd"))
    engine = Engine()
    spec = spec_for(models_dir, "z-image", ulysses_degree=2)
    seen = {}

    real_admit = group_module.WorkerGroup._admit

    def watching_admit(self):
        seen["address"] = self.listener.getsockname()[0]
        seen["folder_mode"] = stat.S_IMODE(self.folder.stat().st_mode)
        real_admit(self)

    group_module.WorkerGroup._admit = watching_admit
    try:
        engine.generate(spec, request_for("z-image"))
    finally:
        group_module.WorkerGroup._admit = real_admit
    group = engine._groups.group
    assert seen == {"address": "127.0.0.1", "folder_mode": 0o700}
    assert listening_ports(os.getpid()) == before_ports, "no port stays open once the ranks have joined"
    # A rebuild (a layout change) frees what the old group held, and unloading what the new one holds.
    engine.generate(spec_for(models_dir, "z-image", ring_degree=2), request_for("z-image"))
    assert engine._groups.group is not group and not group.folder.exists()
    folders = [group.folder, engine._groups.group.folder]
    engine.unload_all()
    assert not any(folder.exists() for folder in folders)
    # At most as many as before: an object of an earlier test that the collector frees meanwhile may close one.
    assert len(os.listdir("/proc/self/fd")) <= before_fds, "sockets, process handles and logs are closed"
    assert listening_ports(os.getpid()) == before_ports


# ---- remote ranks: the secret, foreign writers, waiting, rejoining ---------------------------------

def test_remote_ranks_need_the_secret_on_the_host(models_dir, monkeypatch):
    monkeypatch.delenv("OMNI_WORKER_SECRET", raising=False)
    spec = spec_for(models_dir, "z-image", ulysses_degree=2, remote_ranks=1, rendezvous=f"127.0.0.1:{free_port()}")
    with pytest.raises(OmniInputError, match="OMNI_WORKER_SECRET"):
        Engine().generate(spec, request_for("z-image"))


def test_worker_command_refuses_bad_ranks_and_a_missing_secret(capsys, monkeypatch):
    monkeypatch.setenv("OMNI_WORKER_SECRET", SECRET)
    assert run_worker(5, 2, "127.0.0.1:29500", "cpu") == 2
    assert "--rank = 5" in capsys.readouterr().err
    assert run_worker(0, 2, "127.0.0.1:29500", "cpu") == 2
    assert "rank 0 is the ComfyUI machine" in capsys.readouterr().err
    assert run_worker(1, 2, "127.0.0.1", "cpu") == 2
    assert "--master" in capsys.readouterr().err
    monkeypatch.delenv("OMNI_WORKER_SECRET")
    assert run_worker(1, 2, "127.0.0.1:29500", "cpu") == 2
    assert "OMNI_WORKER_SECRET" in capsys.readouterr().err


@pytest.mark.slow
def test_waiting_for_a_remote_rank_obeys_cancel_and_names_it(models_dir, monkeypatch):
    monkeypatch.setenv("OMNI_WORKER_SECRET", SECRET)
    address = f"127.0.0.1:{free_port()}"
    spec = spec_for(models_dir, "z-image", ulysses_degree=2, remote_ranks=1, rendezvous=address)
    engine = Engine()
    cancel_at = time.monotonic() + 3
    with pytest.raises(OmniInterrupted, match="starting"):
        engine.generate(spec, request_for("z-image"), RunControl(interrupted=lambda: time.monotonic() > cancel_at))
    monkeypatch.setattr(group_module, "READY_TIMEOUT_REMOTE", 3.0)
    with pytest.raises(OmniWorkerError) as info:
        engine.generate(spec, request_for("z-image"))
    assert "rank 1 never joined" in str(info.value) and "--rank 1 --world-size 2" in str(info.value)
    engine.unload_all()


@pytest.mark.slow
def test_foreign_writers_are_refused_and_remote_workers_rejoin(models_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("OMNI_WORKER_SECRET", SECRET)
    port = free_port()
    address = f"127.0.0.1:{port}"
    remote = start_remote_worker(port)  # started before the host: it waits, it does not fail
    marker = tmp_path / "ran"
    intruders = []

    def intrude():
        """Connect while the host waits for rank 1, and send a pickle and a forged result."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(intruders) < 2:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.recv(64)
                    forged = wire.encode({"kind": "result", "status": "ok", "value": 0})
                    attempt = pickle.dumps(Exploit(marker)) + b"\0" * 64 if not intruders else b"\0" * 64 + forged
                    sock.sendall(attempt)
                    sock.recv(16)
                    intruders.append(True)
            except OSError:
                time.sleep(0.05)

    try:
        request = request_for("z-image")
        single = Engine().generate(spec_for(models_dir, "z-image"), request).latents
        spec = spec_for(models_dir, "z-image", ulysses_degree=2, remote_ranks=1, rendezvous=address)
        engine = Engine()
        thread = threading.Thread(target=intrude)
        thread.start()
        # The remote worker polls every 2 s: the intruders get in first, then it joins.
        assert_same(engine.generate(spec, request).latents, single)
        thread.join(30)
        group = engine._groups.group
        assert len(group.refused) >= 1 and all("refused" in text for text in group.refused)
        assert not marker.exists(), "nothing a foreign process sent was run"

        engine.unload_all()  # the host goes away (as when ComfyUI restarts) ...
        assert remote.poll() is None, "a remote rank outlives a group and waits for the next one"
        restarted = Engine()  # ... and comes back on the same address
        assert_same(restarted.generate(spec, request).latents, single)
        restarted.unload_all()
    finally:
        remote.kill()
        output = remote.communicate(timeout=10)[0]
    assert "waiting for the host" in output and output.count("joined the group") == 2
    assert "Traceback" not in output, output


@pytest.mark.slow
def test_a_remote_worker_with_the_wrong_secret_is_told_so(models_dir, monkeypatch):
    monkeypatch.setenv("OMNI_WORKER_SECRET", SECRET)
    port = free_port()
    spec = spec_for(models_dir, "z-image", ulysses_degree=2, remote_ranks=1, rendezvous=f"127.0.0.1:{port}")
    # Long enough for the impostor to start (torch's import) and be refused; the host then waits it out.
    monkeypatch.setattr(group_module, "READY_TIMEOUT_REMOTE", 25.0)
    impostor = start_remote_worker(port, secret="another-secret-of-enough-length")
    engine = Engine()
    try:
        with pytest.raises(OmniWorkerError, match="rank 1 never joined"):
            engine.generate(spec, request_for("z-image"))
        output = impostor.communicate(timeout=30)[0]
    finally:
        impostor.kill()
        engine.unload_all()
    assert impostor.returncode == 1 and "refused this worker's secret" in output and "OMNI_WORKER_SECRET" in output


# ---- the host stops waiting: Ctrl-C in a script, in a terminal ---------------------------------------

@pytest.mark.slow
def test_keyboard_interrupt_in_the_host_stops_the_ranks_and_keeps_the_group(models_dir, engine):
    spec = spec_for(models_dir, "qwen-image", ulysses_degree=2)
    single = engine.generate(spec_for(models_dir, "qwen-image"), request_for("qwen-image")).latents
    engine.generate(spec, request_for("qwen-image"))
    group = engine._groups.group
    seen = []

    def ctrl_c(step, _total):
        seen.append(step)
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.generate(spec, request_for("qwen-image", steps=50), RunControl(progress=ctrl_c))
    assert group.outcome_of_abandoned_run == "stopped", "the ranks stopped the abandoned run at a step"
    seen.clear()
    assert_same(engine.generate(spec, request_for("qwen-image"), RunControl(progress=lambda s, t: seen.append(s))
                                ).latents, single)
    assert engine._groups.group is group and seen[0] == 0 and seen[-1] == 3


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_cli_cleanly(models_dir, tmp_path):
    """SIGINT to the whole foreground process group, as a terminal sends it."""
    workflow = PACK_ROOT / "workflows" / "qwen-image-ulysses2.json"
    cli = subprocess.Popen([sys.executable, "-m", "omni_diffusion_nodes.headless.cli", "run", str(workflow),
                            "--models-dir", str(models_dir), "--output-dir", str(tmp_path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        output = ""
        while "step 1/" not in output:  # progress is printed with \r, one character at a time is enough
            character = cli.stdout.read(1)
            assert character, f"the run ended before its first step: {cli.stderr.read()}"
            output += character
        workers = Path(f"/proc/{cli.pid}/task/{cli.pid}/children").read_text().split()
        assert len(workers) == 2
        os.killpg(cli.pid, signal.SIGINT)
        code = cli.wait(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    errors = cli.stderr.read()
    assert code == 130, errors
    assert "stopped by the user" in errors and "killed by signal" not in errors
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()

