"""Import-only stand-in for flash-attn, which OpenRLHF imports at module top (packing
and ring attention only) and which cannot be built without CUDA. Calling anything
raises: the tests never take the paths that need it."""

__version__ = "0.0.0"


def _unavailable(*args, **kwargs):
    raise RuntimeError("flash-attn is a test stand-in here; this path needs the real package")
