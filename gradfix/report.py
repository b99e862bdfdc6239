"""Reporting: one summary line per process, through ``logging``.

The summary is logged once every patch has settled (none left ARMED), or at exit
if some target was never imported. It is INFO on rank 0, WARNING on rank 0 when
something is UNSUPPORTED or FAILED, and on every rank with GRADFIX_LOG=debug.

Records go to the ``gradfix`` logger. While the application has configured no
logging of its own, they are written to stderr instead; a program that has not
even imported ``logging`` cannot have configured it, so gradfix does not import
it either (it would be the largest part of ``import gradfix``).
"""

import os
import sys

from .registry import State

DEBUG, INFO, WARNING = 10, 20, 30  # the logging module's levels
_THRESHOLDS = {"quiet": WARNING, "info": INFO, "debug": DEBUG}
# Launchers' global-rank variables, most specific first.
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")

_log_level = "info"
_profile = None  # GRADFIX_PROFILE, a packaging Version, when set
_summary_logged = False


def configure(log_level: str, profile=None) -> None:
    global _log_level, _profile
    _log_level = log_level
    _profile = profile
    if "logging" in sys.modules:
        sys.modules["logging"].getLogger("gradfix").setLevel(_THRESHOLDS[log_level])


def _configured_logger():
    """The ``gradfix`` logger if the application has set up logging handlers."""
    logging = sys.modules.get("logging")
    if logging is None:
        return None
    logger = logging.getLogger("gradfix")
    logger.setLevel(_THRESHOLDS[_log_level])
    node = logger
    while node is not None:
        if node.handlers:
            return logger
        node = node.parent if node.propagate else None
    return None


def _emit(level: int, message: str) -> None:
    logger = _configured_logger()
    if logger is not None:
        logger.log(level, message)
    elif level >= _THRESHOLDS[_log_level]:
        try:
            sys.stderr.write(message + "\n")
        except Exception:
            pass


def process_rank(environ=os.environ) -> int:
    for name in _RANK_VARIABLES:
        try:
            return int(environ[name])
        except (KeyError, ValueError):
            continue
    return 0


def rank_label(environ=os.environ) -> str:
    """`` [rank N]`` in a process a launcher started (a rank variable is set), else ''."""
    if not any(name in environ for name in _RANK_VARIABLES):
        return ""
    return f" [rank {process_rank(environ)}]"


def _speaks() -> bool:
    """Rank 0 reports; every rank does under GRADFIX_LOG=debug."""
    return _log_level == "debug" or process_rank() == 0


def info(message: str) -> None:
    _emit(INFO if _speaks() else DEBUG, message)


_said_once = set()


def info_once(message: str) -> None:
    """``info`` the first time this process says ``message``, nothing after (a fix's
    note that would otherwise repeat for every trainer or argument object built)."""
    if message not in _said_once:
        _said_once.add(message)
        info(message)


def warning(message: str) -> None:
    _emit(WARNING if _speaks() else DEBUG, message)


def debug(message: str) -> None:
    _emit(DEBUG, message)


def _package(status) -> str:
    return f"{status.package} {status.installed_version or '(version unknown)'}"


def describe(status) -> str:
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
    (State.CONFLICT, "conflict, left alone"),
    (State.FAILED, "failed"),
    (State.NOT_NEEDED, "not needed"),
    (State.DISABLED, "disabled"),
    (State.REVERTED, "reverted"),
)


def version_label() -> str:
    """``gradfix 0.2.0``, with the pinned patch set when GRADFIX_PROFILE chose one."""
    from . import __version__  # set by the package before it imports the engine

    return f"gradfix {__version__}" + (f" (profile {_profile})" if _profile is not None else "")


def summary_of(by_state: dict) -> str:
    """The summary line from {state: [describe(record)]} (Registry.descriptions_by_state)."""
    if not by_state:
        return f"{version_label()}{rank_label()}: active; the catalog has no patches"
    parts = [f"{label}: {', '.join(by_state[state])}" for state, label in _ORDER if state in by_state]
    return f"{version_label()}{rank_label()}: " + "; ".join(parts)


def log_summary(by_state: dict, *, final: bool = False) -> None:
    """Log the summary once, when nothing is ARMED any more (or at exit: ``final``), from
    the descriptions grouped by state (Registry.descriptions_by_state)."""
    global _summary_logged
    if _summary_logged or (not final and State.ARMED in by_state):
        return
    _summary_logged = True
    troubled = any(state in by_state for state in (State.UNSUPPORTED, State.CONFLICT, State.FAILED))
    (warning if troubled else info)(summary_of(by_state))


def log_evidence(statuses) -> None:
    """At exit, the runtime evidence: did each applied fix matter in this process? A
    process that reached none of several applied fixes (a launcher, a data worker)
    says so in one line instead of one per fix."""
    applied = [s for s in statuses if s.state == State.APPLIED]
    if len(applied) > 1 and not any(s.hits for s in applied) and not rank_label():
        info(f"gradfix: applied, never reached in this process (pid {os.getpid()}; normal for a launcher or "
             f"any process that does not train): {', '.join(s.id for s in applied)}")
        return
    for s in applied:
        info(f"gradfix{rank_label()}: {s.id} applied, {s.evidence}")
