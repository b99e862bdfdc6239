"""Patch records and their states, shared by every thread of the process.

Plain classes rather than enum/dataclasses: this module is on the path of every
``import gradfix`` and those imports would cost more than gradfix itself.
"""

import _thread


class State:
    """The state of one patch in one process (plain strings, JSON-ready)."""

    ARMED = "armed"  # waiting for the target module to be imported
    APPLIED = "applied"
    NOT_NEEDED = "not_needed"  # package absent, or fixed in the installed code
    UNSUPPORTED = "unsupported"  # in the affected range, but not the known buggy code
    CONFLICT = "conflict"  # another patcher replaced the code gradfix would wrap
    FAILED = "failed"
    DISABLED = "disabled"
    REVERTED = "reverted"
    ALL = (ARMED, APPLIED, NOT_NEEDED, UNSUPPORTED, CONFLICT, FAILED, DISABLED, REVERTED)


class PatchStatus:
    """A read-only snapshot of one patch in this process; ``to_dict()`` for logging
    to W&B, TensorBoard or JSON."""

    __slots__ = ("id", "package", "installed_version", "package_present", "affected",
                 "fixed_in", "state", "reason", "hits", "evidence", "locations", "notes")

    def __init__(self, **fields):
        for name in self.__slots__:
            object.__setattr__(self, name, fields[name])

    def __setattr__(self, name, value):
        raise AttributeError("PatchStatus is read-only")

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["locations"] = list(self.locations)
        data["notes"] = list(self.notes)
        return data

    def __eq__(self, other):
        return isinstance(other, PatchStatus) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self) -> str:
        return f"PatchStatus(id={self.id!r}, state={self.state!r}, hits={self.hits}, reason={self.reason!r})"


class PatchRecord:
    """The engine's mutable view of one patch; guarded by ``Registry.lock``. It has the
    attributes the summary line reads from a PatchStatus (id, package, state, reason,
    installed_version, hits), so activation reports without taking snapshots."""

    # Defaults as class attributes: a record is created for every catalog entry at
    # every start-up, and most are never changed beyond their state.
    installed_version = None
    package_present = True
    state = None
    reason = ""
    version_verdict = None
    target = None  # the module whose import applies the patch
    fix = None  # the fix module, loaded when the target is imported
    patcher = None
    hook_registered = False

    def __init__(self, entry):
        self.entry = entry

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def package(self) -> str:
        return self.entry.package

    @property
    def hits(self) -> int:
        return self.patcher.hits if self.patcher else 0

    def set(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason

    def snapshot(self) -> PatchStatus:
        patcher = self.patcher
        hits = self.hits
        applied = self.state == State.APPLIED and self.fix is not None
        return PatchStatus(
            id=self.entry.id,
            package=self.entry.package,
            installed_version=self.installed_version,
            package_present=self.package_present,
            affected=self.entry.affected,
            fixed_in=self.entry.fixed_in,
            state=self.state or State.ARMED,
            reason=self.reason,
            hits=hits,
            evidence=self.fix.evidence(hits) if applied else "",
            locations=patcher.locations if patcher else (),
            notes=tuple(patcher.notes) if patcher else (),
        )


class Registry:
    """Records by patch id. One re-entrant lock serialises every state change.

    A patch whose package is not installed is settled at activation from its catalog
    row alone (``defer_absent``): its record, and the catalog entry behind it, are
    built only when something asks for them, so that a large catalog costs little at
    start-up. Such a patch is NOT_NEEDED and can never be applied."""

    def __init__(self) -> None:
        self.lock = _thread.RLock()
        self._records = {}  # id -> PatchRecord, or (origin, row) for a deferred absent patch

    def defer_absent(self, origin, rows) -> set:
        """Settle these rows' patches as absent, except those with a record built already
        (a re-activation evaluates them again); returns the ids deferred."""
        with self.lock:
            records = self._records
            deferred = {row[0]: (origin, row) for row in rows}
            if not records.keys().isdisjoint(deferred):  # a re-activation
                deferred = {key: value for key, value in deferred.items() if type(records.get(key, ())) is tuple}
            records.update(deferred)
            return deferred.keys()

    def _built(self, patch_id: str):
        value = self._records.get(patch_id)
        if type(value) is tuple:  # build the deferred record, in place (the order is kept)
            origin, row = value
            value = self._records[patch_id] = PatchRecord(origin.entry(row))
            value.target, value.package_present = value.entry.target, False
            value.set(State.NOT_NEEDED, f"{row[1]} is not installed")
        return value

    def record_for(self, entry) -> PatchRecord:
        with self.lock:
            record = self._built(entry.id)
            if record is None:
                record = self._records[entry.id] = PatchRecord(entry)
            return record

    def get(self, patch_id: str):
        with self.lock:
            return self._built(patch_id)

    def ids(self):
        return list(self._records)

    def records(self):
        with self.lock:
            return [self._built(patch_id) for patch_id in self._records]

    def built_records(self):
        """The records built so far: every one that can be armed or applied."""
        with self.lock:
            return [value for value in self._records.values() if type(value) is not tuple]

    def snapshot(self):
        with self.lock:
            return [record.snapshot() for record in self.records()]

    def descriptions_by_state(self, describe) -> dict:
        """{state: [describe(record)]}, in catalog order, for the summary line; a deferred
        patch is described by its id, without building its record."""
        groups = {}
        with self.lock:
            for patch_id, value in self._records.items():
                if type(value) is tuple:
                    groups.setdefault(State.NOT_NEEDED, []).append(patch_id)
                else:
                    groups.setdefault(value.state or State.ARMED, []).append(describe(value))
        return groups
