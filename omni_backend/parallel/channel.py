"""The one narrow channel between the host and its workers: keys in a torch.distributed TCPStore.

The host owns the store; workers (local ones it starts, or remote ones a user starts with
`omni-diffusion worker`) connect to it, and the same store is the rendezvous of their process
group. Per group generation `g`, request `n`:
    g{g}/request/{n}   host -> all ranks   pickled (kind, payload)
    g{g}/progress/{n}  rank 0 -> host      "step/total"
    g{g}/stop/{n}      host -> rank 0      set when the user interrupts
    g{g}/result/{n}    rank 0 -> host      pickled ("ok", value) | ("interrupted",) | ("error", text)
    g{g}/error/{rank}  any rank -> host    the text of a failure that kills that rank
    g{g}/ready/{rank}  rank -> host        joined the process group
Waiting on a key in the store never times out a collective, so idle workers can wait for hours.
"""

from __future__ import annotations

import pickle
import time
from datetime import timedelta

STORE_TIMEOUT = timedelta(seconds=30)
CHUNK = 4 * 1024 * 1024  # the libuv TCPStore refuses messages above 8 MiB: larger values go in parts


def connect(host: str, port: int, is_host: bool):
    from torch.distributed import TCPStore

    return TCPStore(host, port, is_master=is_host, wait_for_workers=False, timeout=STORE_TIMEOUT,
                    use_libuv=True)


class Channel:
    def __init__(self, store, generation: int):
        from torch.distributed import PrefixStore

        self.store = store
        self.generation = generation
        self.keys = PrefixStore(f"g{generation}/", store)

    def put(self, key: str, value) -> None:
        data = pickle.dumps(value)
        parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        for index, part in enumerate(parts[1:], start=1):
            self.keys.set(f"{key}#{index}", part)
        self.keys.set(key, len(parts).to_bytes(8, "big") + parts[0])  # written last: the value is complete

    def has(self, key: str) -> bool:
        return self.keys.check([key])

    def get(self, key: str):
        head = self.keys.get(key)
        count = int.from_bytes(head[:8], "big")
        return pickle.loads(head[8:] + b"".join(self.keys.get(f"{key}#{i}") for i in range(1, count)))

    def wait(self, key: str, poll: float = 0.05, still_waiting=None):
        """Block until `key` exists; `still_waiting()` may raise to give up."""
        while not self.has(key):
            if still_waiting is not None:
                still_waiting()
            time.sleep(poll)
        return self.get(key)

    def process_group_store(self):
        from torch.distributed import PrefixStore

        return PrefixStore("process_group/", self.keys)
