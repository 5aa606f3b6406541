"""Ports for the embedded services and roles: chosen ahead, and checked."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST_PORT = 10000
_pick = random.SystemRandom()


def free_port() -> int:
    """A port that can be bound now, below the kernel's ephemeral range. A port from `bind(0)` could be handed out
    again before we bind it: the Temporal dev server takes five ports that way, and a connection's source port comes
    from that range too (a bench run's POST /api/jobs was once answered 404, most likely by Temporal's HTTP API on
    the port chosen for ours)."""
    highest = _lowest_ephemeral_port() - 1
    for _ in range(100):
        port = _pick.randint(LOWEST_PORT, highest)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port below the ephemeral range")


def _lowest_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
