"""Running lf_run.py (one ``llamafactory-cli train`` and its reference) against a cached
LLaMA-Factory release, and reading its result."""

import functools
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import clean_env, failure_output, free_port, run_job

RUNNER = Path(__file__).resolve().parent / "lf_run.py"
STUBS = Path(__file__).resolve().parent / "stubs"
MATCH = 1e-5  # relative update error of a correct run (fp32: about 3e-7 here)
BUG = 0.1  # a wrong run is off by 28% to 85% on this data
NOT_CONFIGURED = "run through `nox -s llamafactory` (GRADFIX_LF_RELEASES)"


def releases():
    """LLaMA-Factory release -> {"folder": what shadows the venv ("" for the venv's own),
    "deepspeed": the cached DeepSpeed release its DeepSpeed runs use}."""
    return json.loads(os.environ.get("GRADFIX_LF_RELEASES", "{}"))


def stack(release):
    found = releases().get(release)
    if found is None:
        pytest.skip(f"LLaMA-Factory {release} is not configured: {NOT_CONFIGURED}")
    return found


@functools.lru_cache(maxsize=None)
def train(release, patched, *options):
    """One run of lf_run.py; ``options`` are its flags."""
    found = stack(release)
    cache = Path(os.environ.get("GRADFIX_CACHE", Path.home() / ".cache" / "gradfix")) / "deepspeed"
    paths = [found["folder"]] if found["folder"] else []
    paths.append(str(STUBS))
    extra = {}
    if "--deepspeed" in options:
        paths.append(str(cache / f"ds-{found['deepspeed']}"))
        # The deepspeed session's JIT-build folder for that release: same torch, so its ops are reused.
        extra = {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(cache / f"ext-{found['deepspeed']}")}
    env = clean_env(PYTHONPATH=os.pathsep.join(paths), GRADFIX="1" if patched else "0", **extra)
    with tempfile.TemporaryDirectory(prefix=f"lf-{release}-") as work:
        argv = [sys.executable, str(RUNNER), work, "--port", str(free_port()), *options]
        proc = run_job(argv, env=env, timeout=1200, cwd=work)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{argv} failed: {failure_output(proc)}"
    return json.loads(lines[0][len("RESULT "):])


def evidence(result, patch_id):
    """The per-rank report lines of ``patch_id`` in a run's output."""
    return [line for line in result["evidence"] if f": {patch_id} " in line]
