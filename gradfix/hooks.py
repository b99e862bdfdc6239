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
    def __init__(self):
        # (thread, name) lookups under way. Another finder that also asks the rest of
        # sys.meta_path (the start-up finder of GRADFIX=1 does) would call back into this
        # one for the same name, and each would ask the other forever.
        self._searching = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _callbacks:
            return None
        key = (_thread.get_ident(), fullname)
        if key in self._searching:
            return None
        self._searching.add(key)
        try:
            spec = _find_with_others(self, fullname, path, target)
        finally:
            self._searching.discard(key)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HookLoader(spec.loader, fullname)
        return spec


def _find_with_others(me, fullname, path, target):
    for finder in list(sys.meta_path):  # a copy: an import on the way may change the list
        if finder is me or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


_FINDER = _Finder()
