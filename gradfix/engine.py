"""Activation: evaluate each catalog entry and arm a post-import hook on its target.

Flow for one patch: disabled? -> version gate -> ARMED on its target module ->
(target imported: gradfix.applying) -> load the fix module -> code probe -> apply ->
APPLIED. Any error becomes a state with a reason; nothing raises into the user's
program unless strict mode asked for it (GradfixStrictError).

Activation costs little whatever the catalog's size: each built-in fix's target comes
from the generated index, so a fix module is imported only when the module it patches
is (an extra catalog entry whose implementation the index does not know is loaded at
activation, to learn its target), and a patch whose package is not installed is
settled from its catalog row. Only the standard library's cheapest modules are
imported here; packaging and wrapt come with the first fix module.
"""

import atexit
import sys

from . import catalog as catalog_module
from . import config, report
from .registry import Registry, State
from .versions import Scan, scan

# hooks, gates, implementation, profile, importlib and gradfix.ray are imported where
# they are needed: a process without any catalog framework or Ray installed needs none
# of them at activation (the start-up budget is 3 ms).


class GradfixStrictError(RuntimeError):
    """Raised under GRADFIX_STRICT=1 when a patch is UNSUPPORTED or FAILED."""


class UnknownPatchError(KeyError):
    """A patch id that is not in the catalog."""

    def __str__(self) -> str:  # KeyError would print only the repr of its argument
        return str(self.args[0])


REGISTRY = Registry()
_settings = config.Settings()
_warned = set()
_atexit_registered = False
_active = False
_ray_hooks_registered = False
_TROUBLE = (State.UNSUPPORTED, State.CONFLICT, State.FAILED)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        report.warning(f"gradfix: {message}")


def _strict_error(statuses) -> GradfixStrictError:
    lines = [f"{s.id} is {s.state}: {s.reason}" for s in statuses]
    return GradfixStrictError(
        "GRADFIX_STRICT=1 and " + "; ".join(lines)
        + ". Unset GRADFIX_STRICT to continue without these patches, or disable them "
        "with GRADFIX_DISABLE."
    )


def is_active() -> bool:
    """Whether gradfix is active in this process (activated and not deactivated)."""
    return _active


RAY = "ray"


def _on_ray_imported(_module) -> None:
    """Ray's own package is imported first: hook ray.init and the job SDK from here (each
    at once when it already is), so that `import gradfix` never loads gradfix.ray."""
    from . import hooks
    from . import ray as ray_support

    for name in (*ray_support.RAY_INIT_MODULES, ray_support.RAY_JOB_SDK):
        hooks.when_imported(name, ray_support.install_ray_init)


def _register_ray_hooks() -> None:
    """Ray workers start from the cluster, not from this process: once Ray is imported
    here, ray.init carries the GRADFIX variables to them (gradfix.ray). Only where Ray
    is installed (or importable): elsewhere no import hook is needed for it."""
    global _ray_hooks_registered
    if _ray_hooks_registered or not (_scan.versions.get(RAY) or _importable(RAY)):
        return
    _ray_hooks_registered = True
    from . import hooks

    hooks.when_imported(RAY, _on_ray_imported)


def activate():
    """Evaluate every catalog entry and arm or apply its patch; returns status()."""
    start()
    return REGISTRY.snapshot()


def start() -> None:
    """What ``import gradfix`` runs: activate() without the status snapshot."""
    global _settings, _atexit_registered, _active
    settings = _settings = config.current()
    _active = True
    report.configure(settings.log_level, settings.profile)
    for problem in settings.problems:
        _warn_once(problem)
    catalog = catalog_module.load(settings.catalog_path)
    for problem in catalog.problems:
        _warn_once(f"catalog problem, skipped: {problem}")
    unknown = config.unknown_ids_problem(settings, catalog.ids)
    if unknown:
        _warn_once(unknown)
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True

    implementations = {row[4] for _, rows in catalog.groups for row in rows}
    _scan_path(catalog, implementations)
    _register_ray_hooks()
    versions = _scan.versions
    # Without GRADFIX_DISABLE, GRADFIX_PROFILE or GRADFIX=0, a patch whose package is
    # neither installed nor importable is NOT_NEEDED whatever else its entry says: it is
    # settled from its catalog row, and its record is built only if asked for.
    plain = not (settings.killed or settings.disable_all or settings.disabled or settings.profile is not None)
    absent_fixes = {name for name in implementations if _absent(name)} if plain else ()
    with REGISTRY.lock:
        for origin, rows in catalog.groups:
            deferred = REGISTRY.defer_absent(
                origin, [row for row in rows if row[4] in absent_fixes and versions[row[1]] is None])
            for row in rows if len(deferred) < len(rows) else ():
                if row[0] not in deferred:
                    _evaluate(REGISTRY.record_for(origin.entry(row)), versions, settings)
        summary = REGISTRY.descriptions_by_state(report.describe)
    report.log_summary(summary)
    if settings.strict:
        if catalog.problems:
            raise GradfixStrictError(
                "GRADFIX_STRICT=1 and the catalog has errors: " + "; ".join(map(str, catalog.problems))
            )
        troubled = [r for r in REGISTRY.built_records() if r.state in _TROUBLE]
        if troubled:
            raise _strict_error(troubled)


def _evaluate(record, versions, settings) -> None:
    """Gate one patch and arm it, unless it is armed or applied already (re-activation)."""
    if record.state in (State.APPLIED, State.ARMED):
        return
    record.installed_version = versions[record.entry.package]
    try:
        if _version_gate(record, settings):
            _arm(record)
    except GradfixStrictError:
        raise
    except Exception as exc:  # e.g. a dependency missing from a broken install
        record.set(State.FAILED, f"{type(exc).__name__}: {exc}")


def _absent(implementation: str) -> bool:
    """Whether the package a built-in fix module patches cannot be imported. False for
    an implementation the index does not know: its entries go through the full gate."""
    target = catalog_module.known_target(implementation)
    return bool(target) and not _importable(target.partition(".")[0])


_scan = Scan({}, set(), set(), True)  # what this activation's pass over sys.path found
_found = {}  # top-level module -> importable, for one activation (every entry of a package asks)


def _scan_path(catalog, implementations) -> None:
    """One pass over sys.path for the activation: the catalog's (and Ray's) versions,
    and which target packages a sys.path folder holds without metadata (a checkout)."""
    global _scan
    packages = {row[1]: row[5] for _, rows in catalog.groups for row in rows}
    packages[RAY] = RAY
    targets = map(catalog_module.known_target, implementations)
    modules = {target.partition(".")[0] for target in targets if target}
    _scan = scan(packages, modules | {RAY})
    _found.clear()


def _importable(module_name: str) -> bool:
    """Whether a top-level module can be found, without importing it. The sys.path
    folders were listed by the activation's scan; only other finders (an editable
    install's, a zip archive's) are asked here."""
    if module_name in sys.modules or module_name in _scan.modules:
        return True
    if module_name not in _found:
        _found[module_name] = any(
            getattr(finder, "find_spec", None) and finder.find_spec(module_name, None) is not None
            for finder in sys.meta_path
            if not (_scan.complete and module_name in _scan.searched and _searches_path(finder))
        )
    return _found[module_name]


def _searches_path(finder) -> bool:
    """The standard finder of sys.path folders, whose listings the scan has read."""
    return getattr(finder, "__name__", None) == "PathFinder" and finder.__module__ == "_frozen_importlib_external"


def _version_gate(record, settings) -> bool:
    """Decide what can be decided before the target is imported (``installed_version``
    already set). Returns True when the patch should be armed (``record.target`` is
    then set; the fix module is loaded when the target is imported); otherwise sets
    the state."""
    entry, version = record.entry, record.installed_version
    record.package_present = True
    if settings.killed:
        record.set(State.DISABLED, "GRADFIX=0")
        return False
    if settings.is_disabled(entry.id):
        record.set(State.DISABLED, "disabled by GRADFIX_DISABLE")
        return False
    if settings.profile is not None:
        from .profile import exclusion

        outside_profile = exclusion(entry, settings.profile)
        if outside_profile:
            record.set(State.DISABLED, outside_profile)
            return False
    if version is not None:
        from .gates import VersionVerdict, version_gate

        record.version_verdict = version_gate(version, entry.affected_set)
        if record.version_verdict == VersionVerdict.UNAFFECTED:
            record.set(State.NOT_NEEDED, f"{entry.package} {version} is outside the affected range {entry.affected}")
            return False
    if not _learn_target(record):
        return False
    if version is None:
        # No distribution metadata: a plain source checkout may still be importable.
        record.package_present = _importable(record.target.partition(".")[0])
        if not record.package_present:
            record.set(State.NOT_NEEDED, f"{entry.package} is not installed")
            return False
        from .gates import VersionVerdict

        record.version_verdict = VersionVerdict.UNCERTAIN
    return True


def _learn_target(record) -> bool:
    """Set ``record.target``: from the index, else by loading the fix module (an extra
    catalog entry with an implementation the index does not know)."""
    if record.target is None:
        record.target = record.entry.target
    if record.target is None:
        from .applying import load_fix

        if not load_fix(record):
            return False
        record.target = record.fix.target
    return True


def _arm(record) -> None:
    entry, target = record.entry, record.target
    record.set(State.ARMED, f"waiting for {target} to be imported")
    report.debug(f"gradfix: {entry.id} armed ({target})")
    if not record.hook_registered:
        from . import hooks

        record.hook_registered = True
        hooks.when_imported(target, lambda module: _target_imported(entry.id, module))
    elif target in sys.modules:  # re-activated after a revert: the hook has fired already
        _target_imported(entry.id, sys.modules[target])


def _target_imported(patch_id: str, module) -> None:
    from .applying import on_target_imported

    on_target_imported(patch_id, module)


def _settle_displaced() -> list:
    """applying.settle_displaced where a patch was applied: only an applied patch can be
    displaced, and applying one has loaded gradfix.applying."""
    applying = sys.modules.get(__package__ + ".applying")
    return applying.settle_displaced() if applying is not None else []


def revert(patch_id: str) -> bool:
    """Restore the original objects of an applied patch. Returns False, with a
    warning, when the patch is not applied or something wrapped on top of it."""
    from .patcher import PatchError

    with REGISTRY.lock:
        record = REGISTRY.get(patch_id)
        if record is None:
            known = ", ".join(sorted(REGISTRY.ids())) or "(none: the catalog is empty)"
            raise UnknownPatchError(
                f"unknown patch id {patch_id!r}; known ids: {known}. `gradfix list` shows them."
            )
        if record.state != State.APPLIED:
            report.warning(f"gradfix: {patch_id} is {record.state}, not applied; nothing to revert")
            return False
        try:
            record.patcher.revert()
        except PatchError as exc:
            report.warning(f"gradfix: not reverting {patch_id}: {exc}")
            return False
        record.set(State.REVERTED, "reverted by gradfix.revert()")
    report.info(f"gradfix: reverted {patch_id}")
    return True


def deactivate():
    """Revert every applied patch and disarm the pending ones."""
    global _active
    _active = False
    with REGISTRY.lock:
        for record in REGISTRY.records():
            if record.state == State.APPLIED:
                revert(record.entry.id)
            elif record.state == State.ARMED:
                record.set(State.DISABLED, "deactivated by gradfix.deactivate()")
        return REGISTRY.snapshot()


def status():
    _settle_displaced()
    return REGISTRY.snapshot()


def _at_exit() -> None:
    try:
        _settle_displaced()
        report.log_summary(REGISTRY.descriptions_by_state(report.describe), final=True)
        report.log_evidence([record.snapshot() for record in REGISTRY.built_records()])
    except Exception:
        pass
