"""Running the shipped verify worker (gradfix.verify.worker) against one cached
DeepSpeed release, in a subprocess, and comparing results."""

import functools
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import clean_env, failure_output, free_port, run_job

from gradfix.verify import compare, dsconfig, worker

WORKER = worker.__file__

FIRST_FIXED = "0.19.0"


def releases_folder():
    folder = os.environ.get("GRADFIX_DS_RELEASES")
    return Path(folder) if folder else None


def version(release):
    return tuple(map(int, release.split(".")))


def releases():
    """The releases this session tests: those of GRADFIX_DS_MATRIX (set by the nox session for
    its tier), or every release in the folder."""
    folder = releases_folder()
    if not folder:
        return []
    found = (p.name[len("ds-"):] for p in folder.glob("ds-*"))
    wanted = os.environ.get("GRADFIX_DS_MATRIX")
    return sorted((r for r in found if not wanted or r in wanted.split(",")), key=version)


def affected_patches(release):
    """The catalog's DeepSpeed patches whose affected range holds ``release``."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from gradfix import catalog

    return {e.id for e in catalog.load().entries
            if e.package == "deepspeed" and Version(release) in SpecifierSet(e.affected)}


def release_env(release, **extra):
    """The environment of a run with ``release`` importable (None: no DeepSpeed)."""
    env = clean_env(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", **extra)
    if release is not None:
        folder = releases_folder()
        env.update(PYTHONPATH=str(folder / f"ds-{release}"), TORCH_EXTENSIONS_DIR=str(folder / f"ext-{release}"))
    return env


# Batching: a DeepSpeed process start (torch, DeepSpeed, gradfix) costs several seconds, a
# run on the tiny model well under one. A test module declares with plan() the single-process
# runs its tests will ask for on each release; the first train() of a planned run trains all
# of that release's planned runs not done yet in one worker process (one for the patched
# runs, one for the unpatched, one for the references), and later calls read the results.
_PLANNED = {}  # (release, patched) -> [job key, ...] in order
_BATCHED = {}  # (release, patched, job key) -> result


def job_key(config_items, backwards=1, user_scaled_loss=False, calls=None):
    return config_items, backwards, user_scaled_loss, tuple(calls) if calls else None


def plan(releases, *jobs):
    """Declare ``jobs`` (job_key tuples) as run on each of ``releases``, with and without
    gradfix, and their plain PyTorch references."""
    for key in [(release, patched) for release in releases for patched in (False, True)] + [(None, False)]:
        planned = _PLANNED.setdefault(key, [])
        planned += [job for job in jobs if job not in planned]


def xdist_group(release):
    """Keep a release's tests on one xdist worker, so its batch is trained once."""
    return pytest.param(release, marks=pytest.mark.xdist_group(f"deepspeed-{release}"))


def in_matrix(wanted):
    """The ``wanted`` releases this session tests, each in its release's xdist group."""
    return [xdist_group(r) for r in releases() if r in wanted]


def _train_batch(release, patched):
    """Train every planned job of (release, patched) not trained yet, in one process."""
    jobs = [job for job in _PLANNED[(release, patched)] if (release, patched, job) not in _BATCHED]
    payload = [{"config": dsconfig.default_config(**dict(items)), "backwards": backwards,
                "user_scaled_loss": user_scaled, "calls": list(calls) if calls else None}
               for items, backwards, user_scaled, calls in jobs]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(payload, handle)
    argv = [sys.executable, WORKER, "--jobs", handle.name, "--mode", "reference" if release is None else "deepspeed"]
    try:
        proc = run_job(argv, env=release_env(release, GRADFIX="1" if patched else "0"), timeout=900,
                       cwd=tempfile.gettempdir())
    finally:
        os.unlink(handle.name)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"{argv} failed: {failure_output(proc)}"
    for job, result in zip(jobs, json.loads(lines[0][len("RESULTS "):])):
        _BATCHED[(release, patched, job)] = result


def train(release, patched, config_items, backwards=1, world=1, user_scaled_loss=False, stages=0, calls=None):
    """One worker run, from a planned batch where the run was planned (see plan()); ``release``
    None is the plain PyTorch reference. Arguments as _train_one."""
    job = job_key(config_items, backwards, user_scaled_loss, calls)
    if world == 1 and not stages and job in _PLANNED.get((release, patched), ()):
        if (release, patched, job) not in _BATCHED:
            _train_batch(release, patched)
        return _BATCHED[(release, patched, job)]
    return _train_one(release, patched, config_items, backwards, world, user_scaled_loss, stages,
                      tuple(calls) if calls else None)


@functools.lru_cache(maxsize=None)
def _train_one(release, patched, config_items, backwards=1, world=1, user_scaled_loss=False, stages=0, calls=None):
    """One worker run; ``release`` None is the plain PyTorch reference. ``config_items``
    is ``tuple(sorted(default_config options))``, hashable for the cache.
    ``user_scaled_loss``: the training loop divides the loss by GA itself and calls
    ``engine.backward(loss, scale_wrt_gas=False)`` (the reference is the same maths).
    ``stages``: a PipelineModule of that many stages, each ``world`` data-parallel
    replicas (stages x world processes). ``calls``: a tuple of call shapes
    ("OUTPUT:BACKWARD", see gradfix.verify.worker.OUTPUTS and BACKWARDS) trained one after the other in
    the same process; the result's ``calls`` holds each by name."""
    config = dsconfig.default_config(**dict(config_items))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    # The worker runs as a plain script, so gradfix is active only through GRADFIX=1
    # (the start-up file): nothing in the training process imports it.
    options = [WORKER, "--config", handle.name, "--backwards", str(backwards)]
    options += ["--calls", ",".join(calls)] if calls else []
    if release is None:
        argv = [sys.executable, *options, "--mode", "reference", "--world", str(world)]
    else:
        processes = world * max(stages, 1)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(free_port())] if processes > 1 else [sys.executable]
        argv = [*launcher, *options, "--mode", "deepspeed", "--pipeline-stages", str(stages)]
        argv += ["--user-scaled-loss"] if user_scaled_loss else []
    env = release_env(release, GRADFIX="1" if patched else "0")
    try:
        proc = run_job(argv, env=env, timeout=600, cwd=tempfile.gettempdir())
    finally:
        os.unlink(handle.name)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{argv} failed: {failure_output(proc)}"
    return json.loads(lines[0][len("RESULT "):])


def config(**options):
    return tuple(sorted(options.items()))


def update_error(result, reference):
    """Largest per-step update error (see gradfix.verify.compare)."""
    return max(compare.Comparison(result, reference, "fp32").update_errors)


def same_gradients(result, reference, tolerance=1e-6):
    norms_ok = all(abs(a - b) <= tolerance * abs(b) + 1e-9 for a, b in zip(result["grad_norms"], reference["grad_norms"])
                   if a is not None)  # None: DeepSpeed reports no norm without a ZeRO optimizer (ZeRO-0 fp32)
    return update_error(result, reference) <= tolerance and norms_ok
