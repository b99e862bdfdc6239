"""What a Ray worker reports to ``gradfix.ray.worker_status()``. Shipped to the
workers by value (not by import), so asking never activates gradfix where it was
not active: only the standard library is imported here."""


def process_status():
    import os
    import socket
    import sys

    gradfix = sys.modules.get("gradfix")
    active = gradfix is not None and gradfix.is_active()
    return {"node": socket.gethostname(), "pid": os.getpid(), "active": active,
            "states": {s.id: s.state for s in gradfix.status()} if active else None}


def actor_status(actor=None):
    """The same, run inside an actor's process through ``actor.__ray_call__``."""
    return process_status()
