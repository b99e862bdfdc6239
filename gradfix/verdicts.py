"""Plain-word verdicts for catalog entries, shared by `gradfix list` and `gradfix doctor`."""

from __future__ import annotations

from typing import List, Tuple

from . import catalog as catalog_module
from . import applying, config
from .registry import PatchStatus, State

APPLIES = "applies"
NOT_NEEDED = "not needed"
PACKAGE_ABSENT = "package absent"
UNSUPPORTED = "unsupported"
ERROR = "error"
DISABLED = "disabled"
CONFLICT = "conflict"
NEEDS_ATTENTION = (UNSUPPORTED, CONFLICT, ERROR)


def verdict_of(status: PatchStatus) -> str:
    if status.state in (State.ARMED, State.APPLIED):  # ARMED from assess(): the code gate found the bug
        return APPLIES
    if status.state == State.NOT_NEEDED:
        return NOT_NEEDED if status.package_present else PACKAGE_ABSENT
    if status.state == State.UNSUPPORTED:
        return UNSUPPORTED
    if status.state == State.CONFLICT:
        return CONFLICT
    if status.state == State.DISABLED:
        return DISABLED
    return ERROR


def assess_catalog(
    settings: config.Settings,
) -> Tuple[catalog_module.Catalog, List[Tuple[catalog_module.CatalogEntry, PatchStatus, str]]]:
    """Load the catalog and assess every entry against the installed code."""
    catalog = catalog_module.load(settings.catalog_path)
    rows = []
    for entry in catalog.entries:
        status = applying.assess(entry, settings)
        rows.append((entry, status, verdict_of(status)))
    return catalog, rows
