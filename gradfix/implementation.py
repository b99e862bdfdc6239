"""The contract between the engine and a fix module (``gradfix/fixes/<package>/<bug>.py``).

A fix module defines, at top level and without importing its framework:

``TARGET``
    The module whose import triggers the patch, e.g.
    ``"deepspeed.runtime.zero.stage_1_and_2"``.
``probe(module) -> gates.Probe``
    The code gate: ``gates.buggy()``, ``gates.fixed()`` or ``gates.unknown(why)``
    for the imported target (a behavioural probe or a source fingerprint).
``apply(module, patcher) -> None``
    Install the fix with ``patcher.wrap(owner, name, wrapper)``; call
    ``patcher.hit()`` whenever the wrapper corrects the buggy path.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from .gates import Probe
from .patcher import Patcher


class ImplementationError(Exception):
    """A fix module that does not follow the contract above."""


@dataclass(frozen=True)
class Fix:
    module_name: str
    target: str
    probe: Callable[[ModuleType], Probe]
    apply: Callable[[ModuleType, Patcher], None]


def load(dotted: str) -> Fix:
    """Import a fix module and check its contract."""
    try:
        module = importlib.import_module(dotted)
    except Exception as exc:
        raise ImplementationError(f"cannot import {dotted}: {type(exc).__name__}: {exc}") from exc
    target = getattr(module, "TARGET", None)
    if not isinstance(target, str) or not target:
        raise ImplementationError(f"{dotted} must define TARGET, the module name to patch")
    for name in ("probe", "apply"):
        if not callable(getattr(module, name, None)):
            raise ImplementationError(f"{dotted} must define a function {name}()")
    return Fix(dotted, target, module.probe, module.apply)
