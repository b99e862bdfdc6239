"""Lazy post-import hooks: run a callback when a module is imported, or at once
if it already was. Nothing is imported on the target's behalf."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import wrapt


def when_imported(module_name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once ``module_name`` has finished importing."""
    wrapt.register_post_import_hook(callback, module_name)
