"""What a process holds open, read from /proc (Linux): the worker-group tests and the memory
benchmark check that a group leaves no listening socket behind."""

from __future__ import annotations

import os
from pathlib import Path


def listening_ports(pid: int | str = "self") -> set[int]:
    """The TCP ports the process listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
