"""Reading a framework's code for the code gates: a method's source with every run of
whitespace collapsed to one space, so that fingerprints survive re-indentation."""

from gradfix import gates


def flat_source(function) -> str:
    import inspect

    return " ".join(inspect.getsource(function).split())


def _is_wrapt_proxy(value) -> bool:
    """A wrapt proxy (1.x or 2.x, C or Python), recognised without importing wrapt."""
    return any(cls.__name__ in ("ObjectProxy", "BaseObjectProxy")
               and cls.__module__.partition(".")[0] in ("wrapt", "_wrappers") for cls in type(value).__mro__)


def replaced_by(owner, attribute):
    """Who replaced ``attribute`` of ``owner`` when it does not come from the owner's own
    package (another patcher such as Unsloth, Liger-Kernel or Axolotl, or a hand-made
    fix), else None. gradfix's own wrappers and the package's decorators do not count."""
    if _is_wrapt_proxy(attribute):
        if getattr(attribute, "gradfix_patch_id", None) is None:
            return "a wrapt wrapper that is not gradfix's"
        return None
    function = getattr(attribute, "__func__", attribute)  # staticmethod, classmethod
    module = getattr(function, "__module__", None)
    home = getattr(owner, "__module__", None) if isinstance(owner, type) else getattr(owner, "__name__", None)
    own = (home or "").partition(".")[0]
    if not isinstance(module, str) or not own:
        return None
    return None if module.partition(".")[0] in (own, "gradfix") else f"code from {module}"


def method_source(owner, name):
    """The flattened source of the method ``name`` that ``owner`` (a class) defines
    itself, or a probe that says why it cannot be read (``gates.unknown``) or that
    someone else replaced it (``gates.conflict``)."""
    label = f"{getattr(owner, '__name__', 'the class')}.{name}"
    if not isinstance(owner, type) or name not in vars(owner):
        return gates.unknown(f"{label} is missing")
    other = replaced_by(owner, vars(owner)[name])
    if other:
        return gates.conflict(f"{label} was replaced by {other}")
    try:
        return flat_source(getattr(owner, name))
    except (OSError, TypeError) as exc:
        return gates.unknown(f"cannot read {label}: {exc}")
