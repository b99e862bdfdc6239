"""gradfix: corrects known gradient-accumulation and loss-reduction bugs of pinned
DeepSpeed, OpenRLHF, TRL/transformers and LLaMA-Factory releases, in place.

``import gradfix`` activates every applicable patch (unless ``GRADFIX=0``). Patches
are applied lazily, when the framework module they fix is imported.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"  # here rather than in a module of its own: one import less at every start-up

from . import engine as _engine
from .engine import GradfixStrictError, UnknownPatchError, activate, deactivate, is_active, revert, status
from .registry import PatchStatus, State

__all__ = [
    "GradfixStrictError",
    "PatchStatus",
    "State",
    "UnknownPatchError",
    "__version__",
    "activate",
    "deactivate",
    "is_active",
    "revert",
    "status",
]


def _started_as_cli() -> bool:
    """The gradfix command line activates only where a command asks for it."""
    argv = getattr(_sys, "argv", None) or [""]
    if _os.path.basename(argv[0]) in ("gradfix", "gradfix.exe"):  # the console script
        return True
    orig_argv = getattr(_sys, "orig_argv", ())  # Python 3.10+: sees `python -m gradfix`
    return any(a == "-m" and b in ("gradfix", "gradfix.cli", "gradfix._generate", "gradfix.conformance") for a, b in zip(orig_argv, orig_argv[1:]))


if not _started_as_cli():
    try:
        _engine.start()  # activate() without the status snapshot it returns
    except GradfixStrictError:
        raise
    except Exception as _exc:  # a bug in gradfix must not break the program importing it
        from . import report as _report

        _report.warning(f"gradfix: activation failed ({type(_exc).__name__}: {_exc}); continuing without gradfix")
