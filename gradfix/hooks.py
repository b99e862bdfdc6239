"""Lazy post-import hooks: run a callback once a module has been imported, or at
once if it already was. Nothing is imported on the target's behalf.

A small ``sys.meta_path`` finder watches only the registered names; it lets the
other finders locate the module and wraps the loader so that callbacks run right
after the module's code. (wrapt offers the same, but importing wrapt 2.x pulls in
asyncio, which would triple the cost of ``import gradfix``.)
"""

import _thread
import sys

_lock = _thread.RLock()
_callbacks = {}  # module name -> [callback]


def when_imported(module_name, callback):
    """Call ``callback(module)`` once ``module_name`` has finished importing."""
    with _lock:
        module = sys.modules.get(module_name)
        if module is None:
            _callbacks.setdefault(module_name, []).append(callback)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    callback(module)


def _fire(module_name, module):
    with _lock:
        callbacks = _callbacks.pop(module_name, [])
    for callback in callbacks:
        callback(module)


class _HookLoader:
    """Delegates to the real loader; runs the callbacks after ``exec_module``."""

    def __init__(self, loader, module_name):
        self._loader = loader
        self._module_name = module_name

    def __getattr__(self, name):  # get_source, is_package, get_resource_reader, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # Put the real loader back before anyone else looks at the module.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        _fire(self._module_name, module)


class _Finder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookLoader(spec.loader, fullname)
                return spec
        return None


_FINDER = _Finder()
