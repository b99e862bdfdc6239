"""Install and remove wrappers where an attribute is defined, and count hits.

A patch never replaces code: it wraps the original object with a wrapt
``FunctionWrapper`` that remembers its patch id. Reverting puts the exact
original object back, and refuses when someone else has wrapped on top since.
"""

import threading

import wrapt

from gradfix.origin import replaced_by


class PatchError(RuntimeError):
    """A patch could not be installed because the target is not where it should be."""


class PatchConflict(PatchError):
    """The code to wrap was replaced by someone else (another patcher, a hand-made fix)."""


class GradfixWrapper(wrapt.FunctionWrapper):
    """The wrapper gradfix installs; carries the id of the patch that owns it."""

    def __init__(self, wrapped, wrapper, patch_id: str):
        super().__init__(wrapped, wrapper)
        self._self_gradfix_patch_id = patch_id

    @property
    def gradfix_patch_id(self) -> str:
        return self._self_gradfix_patch_id


def _name(owner) -> str:
    return getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))


_INHERITED = object()  # the original of a name that define() added: revert deletes it


class _Wrap:
    __slots__ = ("owner", "name", "original", "wrapper")

    def __init__(self, owner, name, original, wrapper):
        self.owner, self.name, self.original, self.wrapper = owner, name, original, wrapper

    @property
    def where(self) -> str:
        return f"{getattr(self.owner, '__module__', '') or ''}.{_name(self.owner)}.{self.name}".lstrip(".")


class Patcher:
    """Handed to a fix's ``apply``: wraps attributes and counts buggy-path hits."""

    def __init__(self, patch_id: str):
        self.patch_id = patch_id
        self.notes = []
        self._wraps = []
        self._hits = 0
        self._hit_lock = threading.Lock()

    # -- used by fixes -----------------------------------------------------
    def wrap(self, owner, name: str, wrapper, overridden_on_purpose=()) -> None:
        """Wrap ``owner.name`` (a class or module that defines it) with ``wrapper``.

        ``wrapper(wrapped, instance, args, kwargs)`` follows wrapt's convention.
        Subclasses that override ``name`` are reported as not patched, except those in
        ``overridden_on_purpose``: overrides the fix has checked never reach the buggy
        code (they raise, or call the wrapped original themselves).
        """
        namespace = vars(owner)
        if name not in namespace:
            raise PatchError(
                f"{_name(owner)} does not define {name!r} itself; patch the class or "
                "module where it is defined"
            )
        original = namespace[name]
        if isinstance(original, GradfixWrapper) and original.gradfix_patch_id == self.patch_id:
            return  # already wrapped by this patch
        other = replaced_by(owner, original) if isinstance(owner, type) else None
        if other:
            raise PatchConflict(f"{_name(owner)}.{name} was replaced by {other}")
        wrapped = GradfixWrapper(original, wrapper, self.patch_id)
        setattr(owner, name, wrapped)
        self._wraps.append(_Wrap(owner, name, original, wrapped))
        if isinstance(owner, type):
            self.notes += [
                f"{_name(sub)} overrides {name} and is not patched"
                for sub in _all_subclasses(owner)
                if name in vars(sub) and sub not in overridden_on_purpose
            ]

    def define(self, owner: type, name: str, value) -> None:
        """Give ``owner`` its own ``name`` where it only inherits one (e.g. a
        ``staticmethod`` ``__new__`` that sees a constructor's keyword arguments in
        every subclass). Reverting deletes it again."""
        if name in vars(owner):
            raise PatchError(f"{_name(owner)} already defines {name!r}; wrap it instead")
        setattr(owner, name, value)
        self._wraps.append(_Wrap(owner, name, _INHERITED, value))

    def hit(self, count: int = 1) -> None:
        """Record that the patched code corrected the buggy path ``count`` times."""
        with self._hit_lock:
            self._hits += count

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def locations(self):
        return tuple(w.where for w in self._wraps)

    # -- used by the engine -------------------------------------------------
    def displaced(self):
        """``(location, by whom)`` of each wrapper that no code path reaches any more:
        another patcher replaced the attribute after gradfix wrapped it (Unsloth, for
        instance, rebuilds ``Trainer.training_step`` from its source and assigns the copy).
        A layer put on top that still calls gradfix's wrapper (a wrapt wrapper, a
        ``functools.wraps`` wrapper, a closure over it) is not a displacement."""
        moved = []
        for w in self._wraps:
            current = vars(w.owner).get(w.name, _MISSING)
            if current is w.wrapper or _reaches(current, w.wrapper):
                continue
            by = "deleted" if current is _MISSING else (replaced_by(w.owner, current) or "other code")
            moved.append((w.where, by))
        return moved

    def withdraw(self):
        """Put the original object back wherever this patch's wrapper is still the
        attribute: part of a correction must not run once another part is gone. Returns
        the locations of wrappers left running because someone layered on top of them
        (unwrapping those would drop the layer)."""
        buried = []
        for w in reversed(self._wraps):
            current = vars(w.owner).get(w.name, _MISSING)
            if current is w.wrapper:
                if w.original is _INHERITED:
                    delattr(w.owner, w.name)
                else:
                    setattr(w.owner, w.name, w.original)
            elif _reaches(current, w.wrapper):
                buried.append(w.where)
        self._wraps = [w for w in self._wraps if w.where in buried]
        return list(reversed(buried))

    def covered_elsewhere(self):
        """Wrappers that are no longer the object found at their location."""
        return [w.where for w in self._wraps if vars(w.owner).get(w.name) is not w.wrapper]

    def revert(self) -> None:
        """Restore every original object; raises PatchError (and changes nothing)
        when one of the wrappers is no longer in place."""
        moved = self.covered_elsewhere()
        if moved:
            raise PatchError(
                f"{', '.join(moved)} changed after gradfix patched it (something wrapped "
                "or replaced it since); reverting would drop that change, so gradfix "
                "leaves it in place"
            )
        for w in reversed(self._wraps):
            if w.original is _INHERITED:
                delattr(w.owner, w.name)
            else:
                setattr(w.owner, w.name, w.original)
        self._wraps.clear()


_MISSING = object()


def _reaches(current, target, depth: int = 6) -> bool:
    """Whether calling ``current`` can still run ``target``: found through ``__wrapped__``
    (wrapt, functools.wraps), a bound wrapt wrapper's parent, the cells of a closure or
    default arguments."""
    seen, layer = set(), [current]
    for _ in range(depth):
        following = []
        for value in layer:
            if value is target:
                return True
            if id(value) in seen or value is None:
                continue
            seen.add(id(value))
            function = getattr(value, "__func__", value)  # staticmethod, classmethod, bound method
            try:
                following.append(getattr(function, "__wrapped__", None))
                # a wrapt wrapper read from the class is bound: its parent is the stored one
                following.append(getattr(function, "_self_parent", None))
            except Exception:  # a proxy whose target is gone
                pass
            for cell in getattr(function, "__closure__", None) or ():
                try:
                    following.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            following.extend(getattr(function, "__defaults__", None) or ())
        layer = following
    return False


def _all_subclasses(cls: type):
    found = []
    stack = list(type.__subclasses__(cls))
    while stack:
        sub = stack.pop()
        if sub not in found:
            found.append(sub)
            stack.extend(type.__subclasses__(sub))
    return found
