"""Whose code a framework attribute is: the framework's own (possibly already wrapped by
gradfix), or someone else's (another patcher, a monitoring tool, the user's own fix)."""


# Where wrapt's proxy base classes say they live: its Python modules, wrapt 2's C module,
# and wrapt 1's C types (which report "builtins").
_WRAPT_HOMES = ("wrapt", "_wrappers", "builtins")


def _is_wrapt_proxy(value) -> bool:
    """A wrapt proxy (1.x or 2.x, C or Python), recognised without importing wrapt."""
    return any(cls.__name__ in ("ObjectProxy", "BaseObjectProxy")
               and cls.__module__.partition(".")[0] in _WRAPT_HOMES for cls in type(value).__mro__)


def _is_gradfix_wrapper(value) -> bool:
    cls = type(value)
    return cls.__name__ == "GradfixWrapper" and cls.__module__ == "gradfix.patcher"


def replaced_by(owner, attribute):
    """Who replaced ``attribute`` of ``owner`` when it does not come from the owner's own
    package (another patcher such as Unsloth, Liger-Kernel or Axolotl, or a hand-made
    fix), else None. gradfix's own wrappers and the package's decorators (which keep the
    function's module) do not count."""
    if _is_wrapt_proxy(attribute):
        return None if _is_gradfix_wrapper(attribute) else "a wrapt wrapper that is not gradfix's"
    function = getattr(attribute, "__func__", attribute)  # staticmethod, classmethod
    module = getattr(function, "__module__", None)
    home = getattr(owner, "__module__", None) if isinstance(owner, type) else getattr(owner, "__name__", None)
    own = (home or "").partition(".")[0]
    if not isinstance(module, str) or not own:
        return None
    return None if module.partition(".")[0] in (own, "gradfix") else f"code from {module}"
