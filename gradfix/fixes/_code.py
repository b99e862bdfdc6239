"""Reading a framework's code for the code gates: a method's source with every run of
whitespace collapsed to one space, so that fingerprints survive re-indentation."""

from gradfix import gates
from gradfix.origin import replaced_by


def flat_source(function) -> str:
    import inspect

    return " ".join(inspect.getsource(function).split())


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


def marked_source(owner, name, fixed_mark, marks, unexpected):
    """The flattened source of ``owner.name`` when it holds every one of ``marks`` (the
    buggy code's fingerprints); otherwise the gate's verdict: why it cannot be read,
    ``gates.fixed()`` when it holds ``fixed_mark``, or ``gates.unknown`` naming the first
    mark it lacks (``unexpected`` says what the method no longer does as expected)."""
    source = method_source(owner, name)
    if isinstance(source, gates.Probe):
        return source
    if fixed_mark in source:
        return gates.fixed()
    missing = [mark for mark in marks if mark not in source]
    if missing:
        return gates.unknown(f"{owner.__name__}.{name} {unexpected} for this release (no {missing[0]!r})")
    return source
