"""Reporting: one summary line per process through ``logging``.

The summary is logged once every patch has settled (none left ARMED), or at exit
if some target was never imported. It is INFO on rank 0, WARNING on rank 0 when
something is UNSUPPORTED or FAILED, and on every rank with GRADFIX_LOG=debug.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, List, Mapping, Optional

from ._version import __version__
from .registry import PatchStatus, State

LOGGER = logging.getLogger("gradfix")

_LEVELS = {"quiet": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
# Launchers' global-rank variables, most specific first.
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


class _StderrWhenUnconfigured(logging.Handler):
    """Print gradfix records to stderr only while the application has set up no
    logging of its own; once it has, records reach its handlers by propagation."""

    def emit(self, record: logging.LogRecord) -> None:
        logger: Optional[logging.Logger] = LOGGER.parent
        while logger is not None:
            if logger.handlers:
                return
            logger = logger.parent if logger.propagate else None
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_fallback_handler = _StderrWhenUnconfigured()
_log_level = "info"
_summary_logged = False


def configure(log_level: str) -> None:
    global _log_level
    _log_level = log_level
    LOGGER.setLevel(_LEVELS[log_level])
    if _fallback_handler not in LOGGER.handlers:
        LOGGER.addHandler(_fallback_handler)


def process_rank(environ: Mapping[str, str] = os.environ) -> int:
    for name in _RANK_VARIABLES:
        try:
            return int(environ[name])
        except (KeyError, ValueError):
            continue
    return 0


def _speaks() -> bool:
    """Rank 0 reports; every rank does under GRADFIX_LOG=debug."""
    return _log_level == "debug" or process_rank() == 0


def info(message: str) -> None:
    LOGGER.log(logging.INFO if _speaks() else logging.DEBUG, message)


def warning(message: str) -> None:
    LOGGER.log(logging.WARNING if _speaks() else logging.DEBUG, message)


def debug(message: str) -> None:
    LOGGER.debug(message)


def _package(status: PatchStatus) -> str:
    return f"{status.package} {status.installed_version or '(version unknown)'}"


def _describe(status: PatchStatus) -> str:
    if status.state in (State.APPLIED, State.ARMED):
        hits = f", corrected {status.hits:,} times" if status.hits else ""
        return f"{status.id} ({_package(status)}{hits})"
    if status.state in (State.UNSUPPORTED, State.FAILED):
        return f"{status.id} ({status.reason})"
    return status.id


_ORDER = (
    (State.APPLIED, "applied"),
    (State.ARMED, "armed, target never imported"),
    (State.UNSUPPORTED, "unsupported"),
    (State.FAILED, "failed"),
    (State.NOT_NEEDED, "not needed"),
    (State.DISABLED, "disabled"),
    (State.REVERTED, "reverted"),
)


def summary_line(statuses: Iterable[PatchStatus]) -> str:
    statuses = list(statuses)
    if not statuses:
        return f"gradfix {__version__}: active; the catalog has no patches"
    parts: List[str] = []
    for state, label in _ORDER:
        chosen = [_describe(s) for s in statuses if s.state is state]
        if chosen:
            parts.append(f"{label}: {', '.join(chosen)}")
    return f"gradfix {__version__}: " + "; ".join(parts)


def log_summary(statuses: List[PatchStatus], *, final: bool = False) -> None:
    """Log the summary once, when nothing is ARMED any more (or at exit: ``final``)."""
    global _summary_logged
    if _summary_logged or (not final and any(s.state is State.ARMED for s in statuses)):
        return
    _summary_logged = True
    troubled = any(s.state in (State.UNSUPPORTED, State.FAILED) for s in statuses)
    (warning if troubled else info)(summary_line(statuses))
