"""torch.distributed's rendezvous carried over the group's authenticated connections.

torch.distributed needs a key-value store to meet (each rank publishes how its collectives can be
reached and reads the others'). torch's TCPStore would do, but it answers anyone who reaches its
port, with no secret at all: a stranger could read or overwrite the peers' addresses. So the host
keeps the keys itself (`HostStore`, plain dict) and each rank reaches them through `ChannelStore`,
a `torch.distributed.Store` whose every operation is a message on an authenticated connection of
its own (connection.py; the host's port, opened right after the rank's request connection). There
is no extra port to find: only ranks that proved the secret can read or write a key.

The store lives as long as the group: gloo meets through it in init_process_group, NCCL also at a
run's first collective (and its watchdog thread looks at it), so the calls are serialized by a lock
and the host answers them while it waits on a run too.

Messages: {"kind": "store", "op": ..., ...} from a rank; {"kind": "store", "value": ...} or
{"kind": "store", "error": ...} back. Values travel as hex text (the wire carries no raw bytes
outside tensors).
"""

from __future__ import annotations

MAX_KEYS = 4096  # far above what init_process_group writes for a few dozen ranks
MAX_VALUE = 1 << 20  # bytes


class StoreError(ValueError):
    """A store request the host will not serve (its text goes back to the rank)."""


class HostStore:
    """The keys of one forming group. `handle` returns the answers to send now, as (rank, message);
    a get or wait for a key not yet set is answered when some rank sets it."""

    def __init__(self):
        self.values: dict[str, bytes] = {}
        self.waiting: list[tuple[int, dict]] = []

    def handle(self, rank: int, message: dict) -> list[tuple[int, dict]]:
        try:
            answer = self._serve(rank, message)
        except (StoreError, KeyError, TypeError, ValueError) as exc:
            return [(rank, {"kind": "store", "error": f"{type(exc).__name__}: {exc}"})]
        answers = [] if answer is None else [(rank, answer)]
        if message.get("op") in ("set", "add", "compare_set"):
            answers += self._wake()
        return answers

    def _serve(self, rank: int, message: dict):
        op = message.get("op")
        if op == "set":
            self._put(_key(message["key"]), _bytes(message["value"]))
            return _ok(None)
        if op in ("get", "wait"):
            keys = [_key(message["key"])] if op == "get" else [_key(key) for key in message["keys"]]
            if all(key in self.values for key in keys):
                return self._answer(message, keys)
            self.waiting.append((rank, message))
            return None
        if op == "add":
            key, amount = _key(message["key"]), message["amount"]
            if not isinstance(amount, int) or isinstance(amount, bool):
                raise StoreError("add takes a whole number")
            total = int(self.values.get(key, b"0")) + amount
            self._put(key, str(total).encode())
            return _ok(total)
        if op == "compare_set":
            key, expected, desired = _key(message["key"]), _bytes(message["expected"]), _bytes(message["desired"])
            current = self.values.get(key)
            if (current is None and not expected) or current == expected:
                self._put(key, desired)
                current = desired
            return _ok((current if current is not None else expected).hex())
        if op == "check":
            return _ok(all(_key(key) in self.values for key in message["keys"]))
        if op == "delete":
            return _ok(self.values.pop(_key(message["key"]), None) is not None)
        if op == "num_keys":
            return _ok(len(self.values))
        raise StoreError(f"unknown store operation {op!r}")

    def _put(self, key: str, value: bytes) -> None:
        if key not in self.values and len(self.values) >= MAX_KEYS:
            raise StoreError(f"the rendezvous holds {MAX_KEYS} keys already")
        self.values[key] = value

    def _answer(self, message: dict, keys: list[str]) -> dict:
        return _ok(self.values[keys[0]].hex() if message["op"] == "get" else None)

    def _wake(self) -> list[tuple[int, dict]]:
        answers, still = [], []
        for rank, message in self.waiting:
            keys = [message["key"]] if message["op"] == "get" else list(message["keys"])
            if all(key in self.values for key in keys):
                answers.append((rank, self._answer(message, keys)))
            else:
                still.append((rank, message))
        self.waiting = still
        return answers


def _ok(value) -> dict:
    return {"kind": "store", "value": value}


def _key(key) -> str:
    if not isinstance(key, str) or len(key) > 4096:
        raise StoreError("a key is text of at most 4096 characters")
    return key


def _bytes(text) -> bytes:
    if not isinstance(text, str) or len(text) > 2 * MAX_VALUE:
        raise StoreError(f"a value is hex text of at most {MAX_VALUE} bytes")
    return bytes.fromhex(text)


def channel_store(connection):
    """(on a rank) A torch.distributed.Store that asks the host over `connection`, a connection used
    for nothing else."""
    import threading

    import torch.distributed as dist

    lock = threading.Lock()

    class ChannelStore(dist.Store):
        def _ask(self, op: str, **fields):
            with lock:  # one question and its answer at a time, whatever thread asks
                connection.send({"kind": "store", "op": op, **fields})
                answer = connection.recv()
            if not isinstance(answer, dict) or answer.get("kind") != "store":
                raise RuntimeError(f"the host answered a store {op} with {answer!r}")
            if "error" in answer:
                raise RuntimeError(f"the host refused a store {op}: {answer['error']}")
            return answer.get("value")

        def set(self, key, value):
            self._ask("set", key=key, value=_as_bytes(value).hex())

        def get(self, key):
            return bytes.fromhex(self._ask("get", key=key))

        def add(self, key, amount):
            return int(self._ask("add", key=key, amount=int(amount)))

        def compare_set(self, key, expected, desired):
            return bytes.fromhex(self._ask("compare_set", key=key, expected=_as_bytes(expected).hex(),
                                           desired=_as_bytes(desired).hex()))

        def delete_key(self, key):
            return bool(self._ask("delete", key=key))

        def num_keys(self):
            return int(self._ask("num_keys"))

        def check(self, keys):
            return bool(self._ask("check", keys=list(keys)))

        def clone(self):  # the same connection and lock: the calls stay one at a time
            return self

        def wait(self, keys, timeout=None):
            # The host answers once every key is set; the group's own start-up deadline (the host
            # ends the group and so this connection) bounds the wait.
            self._ask("wait", keys=list(keys))

    return ChannelStore()


def _as_bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return bytes(value)
