"""Running trainer_worker.py against one cached transformers release (optionally
with a cached DeepSpeed release) under torchrun, and reading its result."""

import functools
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import clean_env, failure_output, free_port, run_job
from packaging.specifiers import SpecifierSet
from packaging.version import Version

WORKER = Path(__file__).resolve().parent / "trainer_worker.py"
MATCH = 1e-5  # relative update error of a correct run (fp32: about 5e-7 here)
BUG = 0.1  # a wrong run is off by 23% to 76% on this data


def releases():
    """transformers release -> folder that shadows the venv's ("" for the venv's own)."""
    return json.loads(os.environ.get("GRADFIX_TF_RELEASES", "{}"))


NOT_CONFIGURED = "run through `nox -s transformers` (GRADFIX_TF_RELEASES)"


def matrix():
    return sorted(releases(), key=Version)


def affected(release, package="transformers"):
    """The catalog's ``package`` patches whose affected range holds ``release``."""
    from gradfix import catalog

    return {e.id for e in catalog.load().entries
            if e.package == package and Version(release) in SpecifierSet(e.affected)}


def deepspeed_folder(release):
    """A cached DeepSpeed release (pure Python) and its own JIT-build folder for this venv."""
    cache = Path(os.environ.get("GRADFIX_CACHE", Path.home() / ".cache" / "gradfix")) / "deepspeed"
    if not (cache / f"ds-{release}").is_dir():
        pytest.skip(f"DeepSpeed {release} is not cached (the nox session installs it)")
    return cache / f"ds-{release}", cache / f"ext-transformers-{release}"


@functools.lru_cache(maxsize=None)
def train(release, patched, *options, ranks=2, deepspeed=None):
    """One run of trainer_worker.py under torchrun; its result plus the launcher's output.
    ``deepspeed``: a cached DeepSpeed release to put on the path (``--zero-stage`` uses it)."""
    folders, extra = [releases()[release]], {}
    if deepspeed:
        code, builds = deepspeed_folder(deepspeed)
        folders.append(str(code))
        extra = {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(builds)}
    result = run_worker(WORKER, folders, patched, options, ranks=ranks, **extra)
    assert result["transformers"] == release
    return result


def run_worker(worker, folders, patched, options, ranks=1, **environment):
    """Run ``worker OUT *options`` under torchrun with ``folders`` first on the path;
    its JSON result with the launcher's output under "output"."""
    env = clean_env(PYTHONPATH=os.pathsep.join(str(f) for f in folders if f) or None,
                    GRADFIX="1" if patched else "0", OMP_NUM_THREADS="1", **environment)
    with tempfile.TemporaryDirectory(prefix="gradfix-worker-") as workdir:
        out = Path(workdir) / "result.json"
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                "--master_port", str(free_port()), str(worker), str(out), *options]
        proc = run_job(argv, env=env, timeout=600, cwd=workdir)
        assert proc.returncode == 0 and out.exists(), f"{argv} failed: {failure_output(proc)}"
        result = json.loads(out.read_text())
    result["output"] = proc.stdout + proc.stderr
    return result


def states(result, patch_ids):
    return {pid: result["gradfix"][pid]["state"] for pid in patch_ids}
