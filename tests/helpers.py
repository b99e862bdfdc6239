"""Small helpers shared by the test modules."""

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX") and k != "PYTHONPATH"}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def free_port() -> int:
    """A TCP port nothing listens on now. Ports derived from the pid collided with
    ports the kernel had handed out to other sockets (EADDRINUSE in CI)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
