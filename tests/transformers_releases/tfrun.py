"""Running trainer_worker.py against one cached transformers release (optionally
with a cached DeepSpeed release) under torchrun, and reading its result.

Importing transformers takes most of a run (8-10 s of CPU per rank against well under
a second of training), so the runs that test modules declare with plan() / plan_jobs()
are trained together: one torchrun launch per (worker, folders, gradfix on or off, ranks)
trains every planned option list of that launch in turn (the workers' --jobs).
"""

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


# A launch is (worker, folders on the path, gradfix on or off, ranks, extra environment).
_PLANNED = {}  # launch -> option tuples, in plan order
_DONE = {}  # (launch, options) -> result


def _launch(worker, folders, patched, ranks, environment):
    return worker, tuple(str(f) for f in folders), patched, ranks, tuple(sorted(environment.items()))


def plan_jobs(worker, folders, option_lists, ranks=1, **environment):
    """Declare that tests run ``worker`` with each of ``option_lists`` with ``folders`` on
    the path, with and without gradfix: the first run_planned() of a launch runs them all."""
    for patched in (False, True):
        planned = _PLANNED.setdefault(_launch(worker, folders, patched, ranks, environment), [])
        planned += [tuple(options) for options in option_lists if tuple(options) not in planned]


def run_planned(worker, folders, patched, options, ranks=1, **environment):
    """run_worker()'s result for ``options``: from its launch's batch when plan_jobs()
    declared it (with gradfix's messages of that job under "log"), else alone (the whole
    output under "log" and "output")."""
    launch = _launch(worker, folders, patched, ranks, environment)
    options = tuple(options)
    if options not in _PLANNED.get(launch, ()):
        return _run_alone(launch, options)
    if (launch, options) not in _DONE:
        jobs = [planned for planned in _PLANNED[launch] if (launch, planned) not in _DONE]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump([list(job) for job in jobs], handle)
        try:
            results = run_worker(worker, folders, patched, ["--jobs", handle.name], ranks=ranks, **environment)
        finally:
            os.unlink(handle.name)
        assert len(results) == len(jobs), results
        _DONE.update({(launch, job): result for job, result in zip(jobs, results)})
    return _DONE[(launch, options)]


@functools.lru_cache(maxsize=None)
def _run_alone(launch, options):
    worker, folders, patched, ranks, environment = launch
    result = run_worker(worker, folders, patched, options, ranks=ranks, **dict(environment))
    result["log"] = result["output"]  # the job had the process to itself
    return result


def grouped(releases_, package="transformers"):
    """``releases_`` as test parameters that keep each release's tests on one xdist worker,
    so that each planned launch runs once."""
    return [pytest.param(release, marks=pytest.mark.xdist_group(f"{package}-{release}")) for release in releases_]


def _environment(release, deepspeed):
    folders, extra = [releases()[release]], {}
    if deepspeed:
        code, builds = deepspeed_folder(deepspeed)
        folders.append(str(code))
        extra = {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(builds)}
    return folders, extra


def plan(releases_, *option_lists, ranks=2, deepspeed=None):
    """plan_jobs() for trainer_worker.py on each of ``releases_`` (see train())."""
    for release in releases_:
        folders, extra = _environment(release, deepspeed)
        plan_jobs(WORKER, folders, option_lists, ranks=ranks, **extra)


def train(release, patched, *options, ranks=2, deepspeed=None):
    """trainer_worker.py's result with ``options`` on a transformers release (batched
    with the other runs plan() declared for the same launch).
    ``deepspeed``: a cached DeepSpeed release to put on the path (``--zero-stage`` uses it)."""
    folders, extra = _environment(release, deepspeed)
    result = run_planned(WORKER, folders, patched, options, ranks=ranks, **extra)
    assert result["transformers"] == release
    return result


def run_worker(worker, folders, patched, options, ranks=1, **environment):
    """Run ``worker OUT *options`` under torchrun with ``folders`` first on the path;
    its JSON result, with the launcher's output under "output" when it is one object."""
    env = clean_env(PYTHONPATH=os.pathsep.join(str(f) for f in folders if f) or None,
                    GRADFIX="1" if patched else "0", OMP_NUM_THREADS="1", **environment)
    with tempfile.TemporaryDirectory(prefix="gradfix-worker-") as workdir:
        out = Path(workdir) / "result.json"
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                "--master_port", str(free_port()), str(worker), str(out), *options]
        proc = run_job(argv, env=env, timeout=600, cwd=workdir)
        assert proc.returncode == 0 and out.exists(), f"{argv} failed: {failure_output(proc)}"
        result = json.loads(out.read_text())
    if isinstance(result, dict):
        result["output"] = proc.stdout + proc.stderr
    return result


def states(result, patch_ids):
    return {pid: result["gradfix"][pid]["state"] for pid in patch_ids}
