"""The contract between the engine and a fix module (``gradfix/fixes/<package>/<bug>.py``).

A fix module defines, at top level and without importing its framework:

``TARGET``
    The module whose import triggers the patch, e.g.
    ``"deepspeed.runtime.zero.stage_1_and_2"``.
``probe(module) -> gates.Probe``
    The code gate: ``gates.buggy()``, ``gates.fixed()`` or ``gates.unknown(why)``
    for the imported target (a behavioural probe or a source fingerprint);
    ``gates.uncorrectable(advice)`` for the known bug gradfix cannot correct.
``apply(module, patcher) -> None``
    Install the fix with ``patcher.wrap(owner, name, wrapper)``; call
    ``patcher.hit()`` whenever the wrapper corrects the buggy path.

Optional, for the runtime evidence in ``gradfix.status()`` and the exit report:

``HITS``
    What one hit counts, e.g. ``"accumulation micro-steps"``.
``UNREACHED``
    Why a patch can be applied and never run, e.g. ``"this run does not use
    optimizer offload with GA >= 3"``.

Optional, for the conflict check that runs before the probe:

``REPLACES``
    The methods the fix wraps, as ``"Class.method"`` names inside the target
    module. When another package (Unsloth, Liger-Kernel, Axolotl, a hand-made fix)
    has already replaced one of them, the patch is reported ``conflict`` and not
    applied, whatever the probe would say of the replacement.
"""

import importlib


class ImplementationError(Exception):
    """A fix module that does not follow the contract above."""


class Fix:
    __slots__ = ("module_name", "target", "probe", "apply", "hits_unit", "unreached", "replaces")

    def __init__(self, module_name, target, probe, apply, hits_unit="times",
                 unreached="the buggy path did not run", replaces=()):
        self.module_name, self.target, self.probe, self.apply = module_name, target, probe, apply
        self.hits_unit, self.unreached, self.replaces = hits_unit, unreached, tuple(replaces)

    def replaced(self, module) -> str:
        """Which of ``replaces`` someone else already replaced in ``module``, in words ("" if none)."""
        from .origin import replaced_by

        for name in self.replaces:
            owner_name, _, method = name.rpartition(".")
            owner = getattr(module, owner_name, None)
            if isinstance(owner, type) and method in vars(owner):
                other = replaced_by(owner, vars(owner)[method])
                if other:
                    return f"{name} was replaced by {other}"
        return ""

    def evidence(self, hits: int) -> str:
        """What an APPLIED patch did in this process, in words."""
        if hits:
            return f"corrected {hits:,} {self.hits_unit}"
        return f"never reached in this process ({self.unreached})"


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
    words = {name: getattr(module, attribute) for name, attribute in (("hits_unit", "HITS"), ("unreached", "UNREACHED"))
             if isinstance(getattr(module, attribute, None), str)}
    replaces = getattr(module, "REPLACES", ())
    if isinstance(replaces, str) or not all(isinstance(n, str) and "." in n for n in replaces):
        raise ImplementationError(f"{dotted}.REPLACES must be a tuple of 'Class.method' names")
    return Fix(dotted, target, module.probe, module.apply, replaces=replaces, **words)


def fix_modules(package: str):
    """Dotted names of every fix module under ``package`` (not packages, and not
    private helper modules such as ``_zero``)."""
    import pkgutil

    root = importlib.import_module(package)
    return sorted(
        info.name
        for info in pkgutil.walk_packages(root.__path__, prefix=package + ".")
        if not info.ispkg and not info.name.rpartition(".")[2].startswith("_")
    )


def coverage_problems(entries, package: str = "gradfix.fixes"):
    """Catalog entries whose implementation does not load, and fix modules under
    ``package`` that no catalog entry names. Empty when the two match."""
    problems = []
    named = set()
    for entry in entries:
        named.add(entry.implementation)
        try:
            load(entry.implementation)
        except ImplementationError as exc:
            problems.append(f"{entry.path}: {exc}")
    problems += [
        f"{module} has no catalog entry (add patches/<id>.toml naming it)"
        for module in fix_modules(package)
        if module not in named
    ]
    return problems
