"""Small helpers shared by the test modules."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# Test tiers (README, "Test tiers and CI time"). CI ("ci", the default) proves every patch on
# one release per code variant, the releases around each bug and every first fixed release;
# the periodic full tier (GRADFIX_TEST_TIER=full, set by `nox -s full_matrix`) adds the rest
# of the release matrix.
TIERS = ("ci", "full")


def current_tier() -> str:
    tier = os.environ.get("GRADFIX_TEST_TIER") or "ci"
    if tier not in TIERS:
        raise ValueError(f"GRADFIX_TEST_TIER={tier!r}: use one of {', '.join(TIERS)}")
    return tier


def tiered(ci, full=()) -> list:
    """The releases a test runs on: ``ci`` always, ``full`` too in the full tier."""
    return [*ci, *full] if current_tier() == "full" else list(ci)


def full_tier_only(why):
    """Mark a test that only the full tier runs, saying what CI proves instead (conftest.py
    skips it in CI)."""
    import pytest

    return pytest.mark.full_tier_only(reason=why)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX") and k != "PYTHONPATH"}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def free_port() -> int:
    """A TCP port nothing listens on now. Ports derived from the pid collided with
    ports the kernel had handed out to other sockets (EADDRINUSE in CI)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# torchrun's report of the rank that failed first, when a signal ended it.
_ROOT_CAUSE_SIGNAL = re.compile(r"Root Cause.*?exitcode\s*:\s*-(\d+)", re.S)


def killed_by(proc):
    """The signal that ended the process, or the first failed rank under torchrun; None
    when it exited by itself (a Python error or a failed check exits with a status)."""
    if proc.returncode < 0:
        return -proc.returncode
    found = _ROOT_CAUSE_SIGNAL.search(proc.stderr or "")
    return int(found.group(1)) if proc.returncode != 0 and found else None


def run_job(argv, **options):
    """subprocess.run with the output captured, for a training job. A job whose process
    (or first failed rank) a signal ended is run once more: gloo can abort a rank while
    the process group is torn down after training has finished (SIGABRT in one CI run;
    100 repetitions of that job on a loaded 2-core machine did not show it). The jobs are
    deterministic, so a real failure fails the second time as well, and a Python error
    or a failed check ends a job with a status, which is never retried."""
    proc = _timed_run(argv, options)
    number = killed_by(proc)
    if number is not None:
        # A warning, so that pytest's summary shows every retry, green runs included.
        warnings.warn(f"job ended by {signal.Signals(number).name}, run once more: {argv}\n"
                      f"{failure_output(proc)}", RuntimeWarning, stacklevel=2)
        proc = _timed_run(argv, options)
    return proc


def _timed_run(argv, options):
    """subprocess.run; with GRADFIX_TEST_JOB_LOG set, one JSON line per job appended to
    that file (the job, its seconds and the test that ran it), to find where the
    release sessions spend their time and which jobs run twice."""
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, **options)
    log = os.environ.get("GRADFIX_TEST_JOB_LOG")
    if log:
        env = options.get("env") or {}
        line = {"seconds": round(time.monotonic() - started, 1), "ended": round(time.time(), 1),
                "worker": os.environ.get("PYTEST_XDIST_WORKER", ""), "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
                "argv": [str(a) for a in argv], "GRADFIX": env.get("GRADFIX"), "PYTHONPATH": env.get("PYTHONPATH")}
        with open(log, "a") as stream:
            stream.write(json.dumps(line) + "\n")
    return proc


def failure_output(proc, characters=6000):
    """The end of a failed job's output: its last ``characters`` of stdout and of stderr
    (stderr holds the ranks' own errors before torchrun's summary)."""
    return f"exit status {proc.returncode}\n{proc.stdout[-characters:]}\n{proc.stderr[-characters:]}"
