"""Patch records and their states, shared by every thread of the process."""

from __future__ import annotations

import enum
import threading
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from .catalog import CatalogEntry
from .gates import VersionVerdict
from .implementation import Fix
from .patcher import Patcher


class State(str, enum.Enum):
    ARMED = "armed"  # waiting for the target module to be imported
    APPLIED = "applied"
    NOT_NEEDED = "not_needed"  # package absent, or fixed in the installed code
    UNSUPPORTED = "unsupported"  # in the affected range, but not the known buggy code
    FAILED = "failed"
    DISABLED = "disabled"
    REVERTED = "reverted"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PatchStatus:
    """A snapshot of one patch in this process, safe to log (``to_dict()``)."""

    id: str
    package: str
    installed_version: Optional[str]
    package_present: bool
    affected: str
    fixed_in: str
    state: State
    reason: str
    hits: int
    locations: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["state"] = self.state.value
        data["locations"] = list(self.locations)
        data["notes"] = list(self.notes)
        return data


@dataclass
class PatchRecord:
    """The engine's mutable view of one patch; guarded by ``Registry.lock``."""

    entry: CatalogEntry
    installed_version: Optional[str] = None
    package_present: bool = True
    state: Optional[State] = None
    reason: str = ""
    version_verdict: Optional[VersionVerdict] = None
    fix: Optional[Fix] = None
    patcher: Optional[Patcher] = None
    hook_registered: bool = False
    notes: List[str] = field(default_factory=list)

    def set(self, state: State, reason: str) -> None:
        self.state = state
        self.reason = reason

    def snapshot(self) -> PatchStatus:
        patcher = self.patcher
        return PatchStatus(
            id=self.entry.id,
            package=self.entry.package,
            installed_version=self.installed_version,
            package_present=self.package_present,
            affected=self.entry.affected_text,
            fixed_in=str(self.entry.fixed_in),
            state=self.state or State.ARMED,
            reason=self.reason,
            hits=patcher.hits if patcher else 0,
            locations=patcher.locations if patcher else (),
            notes=tuple(self.notes) + tuple(patcher.notes if patcher else ()),
        )


class Registry:
    """Records by patch id. One re-entrant lock serialises every state change."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._records: Dict[str, PatchRecord] = {}

    def record_for(self, entry: CatalogEntry) -> PatchRecord:
        with self.lock:
            record = self._records.get(entry.id)
            if record is None:
                record = self._records[entry.id] = PatchRecord(entry)
            return record

    def get(self, patch_id: str) -> Optional[PatchRecord]:
        return self._records.get(patch_id)

    def ids(self) -> List[str]:
        return list(self._records)

    def records(self) -> List[PatchRecord]:
        with self.lock:
            return list(self._records.values())

    def snapshot(self) -> List[PatchStatus]:
        with self.lock:
            return [record.snapshot() for record in self._records.values()]
