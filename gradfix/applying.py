"""Applying: what happens once a patch's target module is imported (gate the code,
load the fix, patch, report), the check that another patcher has not replaced
gradfix's wrappers since, and ``assess`` (what activation would do, for the command
line). Activation (gradfix.engine) loads this module only when a target is imported:
a process that never imports a catalog framework does not pay for it.
"""

from . import engine, report
from .registry import PatchRecord, State
from .versions import installed_versions


def load_fix(record) -> bool:
    """Import the fix module (once). Sets FAILED and returns False when it cannot be
    used, or when it patches another module than the index says (a stale index)."""
    if record.fix is not None:
        return True
    from . import implementation

    try:
        fix = implementation.load(record.entry.implementation)
    except implementation.ImplementationError as exc:
        record.set(State.FAILED, str(exc))
        return False
    if record.target is not None and fix.target != record.target:
        record.set(State.FAILED, f"{record.entry.implementation} patches {fix.target}, but gradfix's catalog "
                   f"index says {record.target}: the index is out of date (`python -m gradfix._generate` "
                   "in a checkout, or reinstall gradfix)")
        return False
    record.fix = fix
    return True


def _code_gate(record, module):
    """Probe the imported target. Returns the probe's detail when the code is the
    known buggy code (apply the fix), else sets the record's state and returns None."""
    from .gates import CodeVerdict, Probe, VersionVerdict, plausibly_affected

    entry, fix = record.entry, record.fix
    package = f"{entry.package} {record.installed_version or '(no version metadata)'}"
    try:
        replaced = fix.replaced(module)
        probe = Probe(CodeVerdict.CONFLICT, replaced) if replaced else fix.probe(module)
    except Exception as exc:
        probe = Probe(CodeVerdict.UNKNOWN, f"the code probe raised {type(exc).__name__}: {exc}")
    if not isinstance(probe, Probe):
        record.set(State.FAILED, f"{fix.module_name}.probe() returned {probe!r}, not a Probe")
        return None
    detail = f" ({probe.detail})" if probe.detail else ""
    if probe.verdict == CodeVerdict.BUGGY:
        return detail
    if probe.verdict == CodeVerdict.FIXED:
        record.set(State.NOT_NEEDED, f"{package}: the installed code already has the fix{detail}")
    elif probe.verdict == CodeVerdict.CONFLICT:
        record.set(State.CONFLICT, f"{package}: {probe.detail}. gradfix does not stack a second correction on it; "
                   f"to use gradfix's instead, load it without the other patch")
    elif probe.verdict == CodeVerdict.UNCORRECTABLE:
        record.set(State.UNSUPPORTED, f"{package} has this bug and gradfix cannot correct it here: "
                   f"{probe.detail}. {entry.upgrade_advice()}")
    elif record.version_verdict == VersionVerdict.UNCERTAIN and not plausibly_affected(
        record.installed_version, entry.affected_set
    ):
        record.set(State.NOT_NEEDED, f"{package} is outside the affected range "
                   f"{entry.affected} and its code is not the known buggy code{detail}")
    else:
        record.set(State.UNSUPPORTED, f"{package} is not the known buggy code{detail}; "
                   f"gradfix leaves it alone. {entry.upgrade_advice()}")
    return None


def on_target_imported(patch_id: str, module) -> None:
    """Post-import hook: gate the imported code and patch it. Never raises,
    except GradfixStrictError under strict mode."""
    try:
        with engine.REGISTRY.lock:
            record = engine.REGISTRY.get(patch_id)
            if record is None or record.state != State.ARMED:
                return  # deactivated or disabled since the hook was armed
            detail = _code_gate(record, module) if load_fix(record) else None
            if detail is not None:
                _apply(record, module, detail)
            status = record.snapshot()
        displaced = settle_displaced()  # another patcher may have replaced an earlier patch's code
        report.debug(f"gradfix: {patch_id} {status.state}: {status.reason}")
        report.log_summary(engine.REGISTRY.descriptions_by_state(report.describe))
    except Exception as exc:  # a bug in gradfix itself must not break the import
        report.warning(f"gradfix: internal error while handling {patch_id}: {exc!r}")
        return
    troubled = [s for s in [status, *displaced] if s.state in engine._TROUBLE]
    if engine._settings.strict and troubled:
        raise engine._strict_error(troubled)


def _apply(record, module, detail: str) -> None:
    entry = record.entry
    try:
        from .patcher import PatchConflict, Patcher, PatchError
    except ImportError as exc:
        record.set(State.FAILED, f"cannot load gradfix's patcher ({exc}); reinstall gradfix")
        return
    patcher = Patcher(entry.id)
    try:
        record.fix.apply(module, patcher)
    except Exception as exc:
        try:
            patcher.revert()  # undo whatever part was installed
        except PatchError:
            pass
        if isinstance(exc, PatchConflict):
            record.set(State.CONFLICT, f"{exc}. gradfix does not stack a second correction on it; "
                       "to use gradfix's instead, load it without the other patch")
        else:
            record.set(State.FAILED, f"applying the fix raised {type(exc).__name__}: {exc}")
        return
    record.patcher = patcher
    version = record.installed_version or "(no version metadata)"
    where = ", ".join(patcher.locations) or "nothing"
    record.set(State.APPLIED, f"{entry.package} {version}: patched {where}{detail}")


def assess(entry, settings):
    """What activation would do with ``entry`` in this environment. Patches
    nothing itself; imports the target module to run the code probe."""
    import importlib

    record = PatchRecord(entry)
    record.installed_version = installed_versions([entry.package])[entry.package]
    if engine._version_gate(record, settings) and load_fix(record):
        try:
            module = importlib.import_module(record.target)
        except Exception as exc:
            record.set(State.FAILED, f"cannot import {record.target}: {type(exc).__name__}: {exc}")
        else:
            live = engine.REGISTRY.get(entry.id)  # the import may have fired this process's own hook
            if live is not None and live.state == State.APPLIED:
                return live.snapshot()  # probing now would only see gradfix's wrapper
            detail = _code_gate(record, module)
            if detail is not None:
                version = record.installed_version or "(no version metadata)"
                record.set(State.ARMED, f"{entry.package} {version} has the bug; "
                           f"gradfix fixes it when active{detail}")
    return record.snapshot()


def settle_displaced() -> list:
    """An applied patch whose wrapper another patcher replaced afterwards (Unsloth rebuilds
    ``Trainer.training_step`` from its source, for instance) no longer corrects anything
    there: report it as a conflict, and unwrap its other wrappers so that no part of the
    correction runs on its own. Checked whenever the state is looked at or a target is
    imported, and at exit."""
    displaced = []
    with engine.REGISTRY.lock:
        for record in engine.REGISTRY.built_records():  # a deferred (absent) patch is never applied
            if record.state != State.APPLIED or record.patcher is None:
                continue
            moved = record.patcher.displaced()
            if not moved:
                continue
            buried = record.patcher.withdraw()
            where = "; ".join(f"{location} was replaced by {by}" for location, by in moved)
            rest = (f"the rest of it is withdrawn except {', '.join(buried)}, which another layer wraps and so "
                    "still runs" if buried else "the rest of it is withdrawn")
            record.set(State.CONFLICT, f"{where}, after gradfix had patched it: gradfix's correction no longer "
                       f"runs there and {rest}; the other patcher's code decides the numerics. To use gradfix's "
                       "correction, run without the other patch (or without its replacement of this method)")
            displaced.append(record.snapshot())
    for status in displaced:
        engine._warn_once(f"{status.id} conflict: {status.reason}")
    return displaced
