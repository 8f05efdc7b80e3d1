"""Who may reach a forming worker group: connections that never authenticate hold up nobody, a group
that still cannot form says why, and nothing the group listens on answers without the secret."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from parallel_support import request_for, spec_for

from omni_backend.engine import Engine
from omni_backend.errors import OmniWorkerError
from omni_backend.workers import group as group_module
from omni_backend.workers.connection import AuthenticationFailed, accept, listen

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
        assert all("did not authenticate in time" in text for text in group.refused)
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
