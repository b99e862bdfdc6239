"""Shared by the benchmarks: build the gradfix wheel and fresh virtual environments."""

import os
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


def deepspeed_release_env(releases: Path, release: str, patched: bool) -> dict:
    """The environment of a benchmark run with a cached DeepSpeed release (installed by
    the nox `deepspeed` session) importable, gradfix on or off through GRADFIX only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX") and k != "PYTHONPATH"}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=str(releases / f"ds-{release}"),
               TORCH_EXTENSIONS_DIR=str(releases / f"ext-{release}"), GRADFIX="1" if patched else "0")
    return env


def single_process_distributed_env() -> None:
    """What deepspeed.init_distributed needs for one process. LOCAL_SIZE 0 keeps
    DeepSpeed's CPU shared-memory all-reduce off: it leaks 64 MiB of /dev/shm per run."""
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_SIZE", "0"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(29500 + os.getpid() % 2000))):
        os.environ.setdefault(name, value)
