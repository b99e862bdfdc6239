"""Shared by the benchmarks: build the gradfix wheel and fresh virtual environments."""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPENDENCIES = ["wrapt", "packaging"]


def _run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def build_wheel(out: Path) -> Path:
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)])
    return next(out.glob("gradfix-*.whl"))


def make_venv(where: Path, *packages) -> Path:
    """A fresh venv with ``packages`` installed; returns its python."""
    _run([sys.executable, "-m", "venv", str(where)])
    python = where / "bin" / "python"
    if packages:
        _run([str(python), "-m", "pip", "install", "-q", *packages])
    return python


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="gradfix-bench-"))


# Run measured interpreters outside the checkout, so `-c` cannot import ./gradfix.
NEUTRAL_CWD = tempfile.gettempdir()


def wall_time(cmd, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=NEUTRAL_CWD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_ms(samples) -> float:
    return statistics.median(samples) * 1000
