"""Who may reach a forming worker group: connections that never authenticate hold up nobody, a group
that still cannot form says why, and nothing the group listens on answers without the secret."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta

import pytest
from parallel_support import request_for, spec_for

from omni_backend.engine import Engine
from omni_backend.errors import OmniInterrupted, OmniWorkerError
from omni_backend.run.sampling import RunControl
from omni_backend.system.process_probe import listening_ports
from omni_backend.workers import group as group_module
from omni_backend.workers.connection import AuthenticationFailed, accept, listen

SECRET = "a-test-secret-of-32-characters!!"
IDLE_PEERS = 25
OLD_SERIAL_WAIT = 10.0  # seconds the host used to give each connecting peer, one peer after another


def open_idle_connections_before_the_ranks(monkeypatch, count: int) -> list[socket.socket]:
    """Have `count` connections that send nothing reach the group's port before its ranks start,
    as any local process that finds the port could."""
    idle: list[socket.socket] = []
    real_spawn = group_module.WorkerGroup._spawn_local_ranks

    def spawn_after_idle_peers(self, secret):
        for _ in range(count):
            idle.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
        real_spawn(self, secret)

    monkeypatch.setattr(group_module.WorkerGroup, "_spawn_local_ranks", spawn_after_idle_peers)
    return idle


def test_a_peer_that_trickles_bytes_is_dropped_at_its_deadline():
    listener = listen("127.0.0.1", 0)
    peer = socket.create_connection(listener.getsockname())
    sock, _ = listener.accept()
    stop = threading.Event()

    def trickle():  # one byte now and then: a per-read timeout would never fire
        peer.recv(64)
        while not stop.wait(0.2):
            try:
                peer.sendall(b"x")
            except OSError:
                return

    thread = threading.Thread(target=trickle)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(AuthenticationFailed, match="in time"):
            accept(sock, {"local": b"k" * 32}, deadline=time.monotonic() + 1.0)
        assert time.monotonic() - started < 5.0
    finally:
        stop.set()
        thread.join(5)
        for s in (sock, peer, listener):
            s.close()


@pytest.mark.slow
def test_idle_local_connections_do_not_stop_or_stall_a_forming_group(models_dir, monkeypatch):
    idle = open_idle_connections_before_the_ranks(monkeypatch, IDLE_PEERS)
    engine = Engine()
    started = time.monotonic()
    try:
        engine.generate(spec_for(models_dir, "z-image", ulysses_degree=2), request_for("z-image"))
        elapsed = time.monotonic() - started
        group = engine._groups.group
        assert len(idle) == IDLE_PEERS
        assert group.unauthenticated == IDLE_PEERS, group.refused
        # Each was dropped at its deadline, or, when the ranks joined first, as the group formed.
        dropped = ("did not authenticate in time", "had not authenticated when every rank had joined")
        assert all(any(reason in text for reason in dropped) for text in group.refused), group.refused
        for sock in idle:  # each was greeted, then dropped by the host
            sock.settimeout(5)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data.startswith(b"OMNI-WORKER-1")
    finally:
        for sock in idle:
            sock.close()
        engine.unload_all()
    # Taking the idle peers one at a time cost OLD_SERIAL_WAIT each (and made the ranks give up).
    assert elapsed < IDLE_PEERS * OLD_SERIAL_WAIT


@pytest.mark.slow
def test_a_group_that_cannot_form_names_the_connections_that_did_not_authenticate(models_dir, monkeypatch):
    # Peers that hold every authentication slot longer than a rank waits for the host's greeting
    # (as a process that keeps reconnecting would): the ranks give up, and the error says why.
    monkeypatch.setattr(group_module, "MAX_PENDING", 2)
    monkeypatch.setattr(group_module, "ADMISSION_TIMEOUT", 120.0)
    idle = open_idle_connections_before_the_ranks(monkeypatch, 2)
    engine = Engine()
    try:
        with pytest.raises(OmniWorkerError) as info:
            engine.generate(spec_for(models_dir, "z-image", ulysses_degree=2), request_for("z-image"))
    finally:
        for sock in idle:
            sock.close()
        engine.unload_all()
    text = str(info.value)
    assert "2 connections to port" in text and "did not authenticate" in text, text
    assert "could not join the group" in text and "Traceback" not in text, text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_with_remote_ranks_no_port_answers_without_the_secret(models_dir, monkeypatch):
    """torch.distributed's rendezvous goes through the authenticated connections: the host opens no
    store port (it had a TCPStore on PORT + 1 that anyone reaching it could read and write)."""
    from torch.distributed import TCPStore

    monkeypatch.setenv("OMNI_WORKER_SECRET", SECRET)
    port = free_port()
    spec = spec_for(models_dir, "z-image", ulysses_degree=2, remote_ranks=1, rendezvous=f"127.0.0.1:{port}")
    before = listening_ports(os.getpid())
    probed = threading.Event()
    seen: dict = {}

    def probe():  # while the host waits for its remote rank, as a stranger on the network would
        try:
            deadline = time.monotonic() + 60
            while port not in listening_ports(os.getpid()) and time.monotonic() < deadline:
                time.sleep(0.05)
            seen["ports"] = listening_ports(os.getpid()) - before
            for where in (port, port + 1):
                try:
                    client = TCPStore("127.0.0.1", where, is_master=False, wait_for_workers=False,
                                      timeout=timedelta(seconds=3))
                    client.set("pg/0", "forged")
                    seen[where] = client.get("pg/0")
                except Exception as exc:  # noqa: BLE001 - any refusal will do
                    seen[where] = exc
        finally:
            probed.set()

    thread = threading.Thread(target=probe)
    thread.start()
    engine = Engine()
    try:
        with pytest.raises(OmniInterrupted):
            engine.generate(spec, request_for("z-image"), RunControl(interrupted=probed.is_set))
    finally:
        thread.join(90)
        engine.unload_all()
    assert seen["ports"] == {port}, "the authenticated rendezvous port is the only one the host opens"
    assert isinstance(seen[port + 1], Exception), f"a store answered on PORT + 1 without the secret: {seen}"
    assert isinstance(seen[port], Exception), f"the rendezvous port served a store without the secret: {seen}"


def test_the_host_store_answers_waits_once_set_and_refuses_what_it_does_not_know():
    from omni_backend.workers.rendezvous import HostStore

    store = HostStore()
    assert store.handle(1, {"kind": "store", "op": "get", "key": "pg/addr0"}) == [], "rank 1 waits for rank 0"
    assert store.handle(1, {"kind": "store", "op": "wait", "keys": ["pg/addr0"]}) == []
    answers = store.handle(0, {"kind": "store", "op": "set", "key": "pg/addr0", "value": b"here".hex()})
    assert answers == [(0, {"kind": "store", "value": None}), (1, {"kind": "store", "value": b"here".hex()}),
                       (1, {"kind": "store", "value": None})]
    assert store.handle(0, {"kind": "store", "op": "add", "key": "n", "amount": 2})[0][1]["value"] == 2
    for bad in ({"op": "exec", "key": "x"}, {"op": "set", "key": 1, "value": ""}, {"op": "set", "key": "x", "value": "zz"},
                {"op": "add", "key": "n", "amount": "2"}):
        [(rank, answer)] = store.handle(0, {"kind": "store", **bad})
        assert rank == 0 and "error" in answer, bad
