"""Test sessions. `python -m nox` runs the default ones (what CI runs).

Environments live under ~/.cache/gradfix/nox and are reused; each records a hash
of its requirements and reinstalls them only when they change. gradfix itself is
rebuilt and installed as a wheel (not editable) in every run, so the tests see
what users get. Later framework matrices add sessions here, each keyed by its
own requirements.
"""

import hashlib
import json
import os
import shutil
import sys
from glob import glob
from pathlib import Path

import nox

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GRADFIX_CACHE", Path.home() / ".cache" / "gradfix"))

nox.options.envdir = str(CACHE / "nox")
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "tests_wrapt1", "tests_oldest_python", "deepspeed", "openrlhf", "transformers",
                        "llamafactory"]
nox.options.error_on_missing_interpreters = False

# Each default session's share of CI's time (a cold run on 2 cores: installs included; the
# target for the whole run is 40 minutes, CI's hard limit 90). A session over its share
# warns, in its output and in .ci/run's summary, without failing. The shares follow each
# session's part of a measured cold run (README, "Test tiers and CI time").
CI_BUDGET_SECONDS = {"tests": 100, "tests_wrapt1": 50, "tests_oldest_python": 50, "deepspeed": 15 * 60,
                     "openrlhf": 11 * 60, "transformers": 6 * 60, "llamafactory": 4 * 60}


# The test tier (README, "Test tiers and CI time"): "ci" (the default run) proves every patch on
# one release per code variant; "full" (the periodic `full_matrix` session) runs the framework
# sessions on the whole release matrix and records the outcome in FULL_MATRIX_RECORD.
TIERS = ("ci", "full")
TIER = os.environ.get("GRADFIX_TEST_TIER") or "ci"
if TIER not in TIERS:
    raise SystemExit(f"GRADFIX_TEST_TIER={TIER!r}: use one of {', '.join(TIERS)}")
FULL = TIER == "full"


def budgeted(function):
    """Time a default session; warn when it exceeds its CI_BUDGET_SECONDS share, and add a
    line to the file named by GRADFIX_CI_TIMES (set by .ci/run) for its summary. The full
    tier is not CI: it is timed by its record (FULL_MATRIX_RECORD) instead."""
    import functools
    import time

    @functools.wraps(function)
    def timed(session):
        if FULL:
            return function(session)
        started = time.monotonic()
        outcome = "failed"
        try:
            function(session)
            outcome = "passed"
        finally:
            seconds = time.monotonic() - started
            budget = CI_BUDGET_SECONDS[function.__name__]
            session.log(f"{function.__name__}: {seconds:.0f} s (its CI budget: {budget} s)")
            if seconds > budget:
                session.warn(f"{function.__name__} took {seconds:.0f} s, over its CI budget of {budget} s: "
                             "find what slowed it (--durations) before CI crosses its limit")
            if os.environ.get("GRADFIX_CI_TIMES"):
                with open(os.environ["GRADFIX_CI_TIMES"], "a") as handle:
                    handle.write(json.dumps({"session": function.__name__, "seconds": round(seconds),
                                             "budget": budget, "outcome": outcome}) + "\n")

    return timed


FULL_MATRIX_RECORD = HERE / "patches" / "full_matrix.json"
# The packages whose catalog entries each framework session proves on real releases.
SESSION_PACKAGES = {"deepspeed": ["deepspeed"], "openrlhf": ["openrlhf"],
                    "transformers": ["transformers", "accelerate", "trl"], "llamafactory": ["llamafactory"]}


def run_release_tests(session, folder, options, env, releases):
    """pytest on the framework tests in ``folder``. The full tier runs the tests that CI
    does not (those of its extra releases; CI's are collected first and left out), and
    writes the outcome of each, the ``releases`` and the catalog's patch ids at the time to
    FULL_MATRIX_RECORD (checked by tests/test_full_matrix.py), failures included."""
    command = ["pytest", *options, folder, SLOWEST, *session.posargs]
    if not FULL:
        session.run(*command, env=env)
        return
    import subprocess
    import time

    tmp = Path(session.create_tmp())
    ci_tests, report = tmp / "ci-tests.txt", tmp / "junit.xml"
    report.unlink(missing_ok=True)
    listing = subprocess.run([str(Path(session.bin) / "python"), "-m", "pytest", "--collect-only", "-q", folder,
                              "-m", "not full_tier_only"],
                             env={**os.environ, **env, "GRADFIX_TEST_TIER": "ci"}, capture_output=True, text=True)
    ci_tests.write_text("\n".join(line for line in listing.stdout.splitlines() if "::" in line))
    started = time.monotonic()
    session.run(*command, f"--junitxml={report}", env={**env, "GRADFIX_CI_TESTS": str(ci_tests)},
                success_codes=[0, 1, 5])  # 5: nothing left to run
    outcomes = record_full_matrix(session.name, report, releases, time.monotonic() - started,
                                  ci_tests=len(ci_tests.read_text().split()))
    if outcomes["failed"]:
        session.error(f"{len(outcomes['failed'])} tests failed in the full tier (recorded in "
                      f"{FULL_MATRIX_RECORD.name}): {', '.join(outcomes['failed'])}")


def record_full_matrix(name, report, releases, seconds, ci_tests):
    import datetime
    import tomllib
    import xml.etree.ElementTree as ElementTree

    outcomes = {"passed": [], "failed": [], "skipped": []}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        outcomes[outcome].append(test)
    patches = sorted(entry["id"] for entry in (tomllib.loads(path.read_text()) for path in (HERE / "patches").glob("*.toml"))
                     if entry.get("package") in SESSION_PACKAGES[name])
    record = json.loads(FULL_MATRIX_RECORD.read_text()) if FULL_MATRIX_RECORD.exists() else {}
    record[name] = {"date": datetime.date.today().isoformat(), "seconds": round(seconds), "releases": releases,
                    "patches": patches, "left_to_ci": ci_tests,
                    **{kind: sorted(tests) for kind, tests in outcomes.items()}}
    FULL_MATRIX_RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return outcomes


TEST_REQUIREMENTS = ["pytest>=7", "packaging>=21"]
# Framework sessions list their slowest tests: CI has a time budget to keep.
SLOWEST = "--durations=30"


def _oldest_python():
    """Python 3.9 (the oldest supported), from PATH or pyenv, if this machine has it."""
    found = sorted(glob(str(Path.home() / ".pyenv" / "versions" / "3.9*" / "bin" / "python3.9")))
    return found[-1] if found else "3.9"


# pip compiles every installed module to bytecode, most of which no test imports: 10 of the 14 s
# of a transformers install. Without it, each module is compiled when first imported and its
# bytecode written next to it, so a cold run pays only for what it uses, once.
NO_COMPILE = "--no-compile"
# ... which needs Python to write that bytecode. This project's machines (CI's included) set
# PYTHONDONTWRITEBYTECODE=1: every test process would then compile torch, transformers and
# DeepSpeed from source again (`import transformers.trainer`: 11 s instead of 4 s), which made
# a cold CI run's tests twice as slow as a warm one's. Sessions and their tests write it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def install_cached(session, *requirements, group="requirements"):
    """pip install ``requirements`` unless this environment already holds exactly them."""
    key = hashlib.sha256(json.dumps([sys.version, *requirements]).encode()).hexdigest()
    stamp = Path(session.virtualenv.location) / f".gradfix-{group}"
    if stamp.exists() and stamp.read_text() == key:
        return
    session.install(NO_COMPILE, *requirements)
    stamp.write_text(key)


def install_gradfix(session):
    """Build gradfix into a wheel and install it, replacing any earlier build."""
    dist = Path(session.create_tmp()) / "dist"
    session.run_install("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(HERE))
    (wheel,) = dist.glob("gradfix-*.whl")
    session.install("--no-deps", "--force-reinstall", str(wheel))
    wheel.unlink()


@nox.session(python="3.11")
@budgeted
def tests(session):
    """Engine, CLI and packaging tests with the newest wrapt (2.x)."""
    install_cached(session, *TEST_REQUIREMENTS, "wrapt>=2,<3", "tomli>=1.1; python_version < '3.11'")
    install_gradfix(session)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python="3.11")
@budgeted
def tests_wrapt1(session):
    """The same without the slow packaging tests, on wrapt 1.x."""
    install_cached(session, *TEST_REQUIREMENTS, "wrapt>=1.14,<2")
    install_gradfix(session)
    session.run("pytest", "-q", "-m", "not slow", *session.posargs)


@nox.session(python=_oldest_python())
@budgeted
def tests_oldest_python(session):
    """Python 3.9 with the oldest supported wrapt, and tomli instead of tomllib."""
    install_cached(session, *TEST_REQUIREMENTS, "wrapt==1.14.*", "tomli>=1.1")
    install_gradfix(session)
    session.run("pytest", "-q", "-m", "not slow", *session.posargs)


# CI: one release per source variant of each patch and every first fixed release.
# ds-zero2-offload-multi-backward alone: 0.14.5. ds-zero2-offload-ga: variant 1 (0.15.2, 0.16.4,
# 0.16.9, 0.18.2), variant 2 (0.18.3, 0.18.6, 0.18.9). ds-zero2-epilogue-reset: 0.18.2, 0.18.3
# first fixed. ds-bf16-zero1-last-microbatch: 0.18.9. ds-scale-wrt-gas-ignored: 0.18.2, 0.18.3 (the
# one affected release), 0.18.4 (fixed). ds-pipeline-ga-scale: 0.15.2 (before), variant 1 (0.16.4,
# 0.18.2), variant 2 (0.18.3), 0.19.3 (first fixed). 0.19.0 first fixed for the offload and bf16
# bugs, 0.19.8 the newest release. ds-output-hooks-*: 0.18.3, 0.19.2 and 0.19.5 (the three hook
# variants), 0.19.6 (engine.backward fixed).
DEEPSPEED_RELEASES = ["0.14.5", "0.15.2", "0.16.4", "0.16.9", "0.18.2", "0.18.3", "0.18.4", "0.18.6", "0.18.9",
                      "0.19.0", "0.19.2", "0.19.3", "0.19.5", "0.19.6", "0.19.8"]
# The full tier adds releases whose code variant CI proves on another release: 0.15.1 (the last
# before ds-zero2-offload-ga), 0.17.6 (the oldest with ds-zero2-epilogue-reset and
# ds-bf16-zero0-unfused, the code of 0.18.2), 0.18.5 (the oldest with ds-bf16-zero1-last-microbatch,
# the code of 0.18.9; the newest with ds-bf16-zero0-unfused, the code of 0.18.3).
DEEPSPEED_FULL_ONLY = ["0.15.1", "0.17.6", "0.18.5"]
DEEPSPEED_DEPENDENCIES = ["hjson", "msgpack", "ninja", "numpy", "psutil", "py-cpuinfo", "pydantic", "tqdm",
                          "einops", "setuptools", "wheel"]


def _folder_complete(folder, requirements):
    stamp = folder / ".gradfix-requirements"
    return folder.is_dir() and stamp.exists() and stamp.read_text() == "\n".join(requirements)


def install_into_folder(session, folder, *requirements, env=None, python=None):
    """pip install ``requirements`` (no dependencies) into ``folder`` once: a folder
    is complete only after the install finished, so an interrupted one is redone, and
    it records its requirements, so a folder whose list changed is rebuilt. ``python``:
    run pip directly with that interpreter (for installs from several threads)."""
    if _folder_complete(folder, requirements):
        return
    shutil.rmtree(folder, ignore_errors=True)
    partial = folder.with_name("partial-" + folder.name)
    shutil.rmtree(partial, ignore_errors=True)
    command = ["-m", "pip", "install", "-q", NO_COMPILE, "--no-deps", "--no-build-isolation", "--upgrade", "--target",
               str(partial), *requirements]
    if python:
        import subprocess

        proc = subprocess.run([python, *command], env={**os.environ, **(env or {})}, capture_output=True, text=True)
        if proc.returncode != 0:
            session.error(f"pip install {' '.join(requirements)} failed:\n{proc.stderr[-3000:]}")
    else:
        session.run_install("python", *command, env=env or {})
    (partial / ".gradfix-requirements").write_text("\n".join(requirements))
    partial.rename(folder)


def install_deepspeed_releases(session, releases, ops=("ShareMemCommBuilder",)):
    """Each release is pure Python (DS_BUILD_OPS=0) in its own folder under
    ~/.cache/gradfix/deepspeed, put on PYTHONPATH by the tests. Missing folders are
    installed a few at a time (a cold install builds DeepSpeed's sdist, ~25 s each,
    mostly waiting). ``ops`` are then given to every folder prebuilt (prebuild_ops)."""
    folders = [CACHE / "deepspeed" / f"ds-{release}" for release in releases]
    jobs = [(folder, [f"deepspeed=={release}"]) for folder, release in zip(folders, releases)]
    install_folders_concurrently(session, jobs, env={"DS_BUILD_OPS": "0"})
    clear_interrupted_builds(CACHE / "deepspeed")
    prebuild_ops(session, releases, ops)
    return CACHE / "deepspeed"


def prebuild_ops(session, releases, ops):
    """Give the installed ``releases`` the C++ ``ops`` (DeepSpeed op builder names) ahead of
    time, each distinct op source compiled once for all releases and sessions
    (tests/deepspeed_ops.py), instead of a JIT build inside the first test that needs it."""
    folders = [CACHE / "deepspeed" / f"ds-{release}" for release in releases]
    session.run_install("python", str(HERE / "tests" / "deepspeed_ops.py"), "--cache", str(CACHE / "deepspeed" / "ops"),
                        *(f"--op={op}" for op in ops), *map(str, folders), env={"DS_ACCELERATOR": "cpu"})


def install_folders_concurrently(session, jobs, env=None, workers=3):
    """install_into_folder for each (folder, requirements) of ``jobs``, ``workers`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    python = str(Path(session.bin) / "python")
    missing = [(folder, requirements) for folder, requirements in jobs if not _folder_complete(folder, requirements)]
    if not missing:
        return
    session.log(f"installing {len(missing)} folders, {workers} at a time: {', '.join(f.name for f, _ in missing)}")

    def install(job):
        folder, requirements = job
        install_into_folder(session, folder, *requirements, env=env, python=python)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(install, missing))  # list(): re-raises the first failure


def clear_interrupted_builds(folder):
    """torch's JIT build of a DeepSpeed op (ext-<release>/<op>) holds a ``lock`` file
    while it compiles. A build that was killed (Ctrl-C, a cancelled job) leaves it
    behind, and every later run would wait on it forever. Sessions run one at a time,
    so no build is under way when one starts."""
    for lock in folder.glob("ext-*/*/lock"):
        lock.unlink()


# The launchers and Ray the coverage tests start (tests/deepspeed_releases/test_launchers.py, test_ray.py).
LAUNCHERS = ["accelerate", "ray[default]==2.48.0"]  # [default]: the dashboard, for `ray job submit`


@nox.session(python="3.11")
@budgeted
def deepspeed(session):
    """Real DeepSpeed releases on CPU: one torch venv, the releases side by side; also
    the launchers and Ray clusters that start them. Tests marked with an xdist group
    (one Ray cluster at a time) stay on one worker."""
    install_cached(session, "torch==2.13.0", group="torch")  # alone first: the local CPU wheel
    install_cached(session, *TEST_REQUIREMENTS, "pytest-xdist", "wrapt>=2,<3", *DEEPSPEED_DEPENDENCIES, *LAUNCHERS)
    install_gradfix(session)
    matrix = DEEPSPEED_RELEASES + (DEEPSPEED_FULL_ONLY if FULL else [])
    releases = install_deepspeed_releases(session, matrix)
    run_release_tests(session, "tests/deepspeed_releases",
                      ["-q", "-n", str(min(os.cpu_count() or 1, 4)), "--dist", "loadgroup"],
                      env={"GRADFIX_DS_RELEASES": str(releases), "GRADFIX_DS_MATRIX": ",".join(matrix)},
                      releases={"deepspeed": matrix})


# OpenRLHF release -> (the transformers release it pins, the DeepSpeed release its tests
# run with, what else its folder needs). DeepSpeed: the cached release nearest its pin
# that has none of the DeepSpeed bugs in the configurations these tests use (ZeRO-2
# without offload), so that only the OpenRLHF bug is seen; the paper's configuration
# test uses 0.9.10's (0.18.9, its pin) with offload. The venv holds the transformers 5 line; releases that
# pin transformers 4 carry the hub, tokenizers, peft and datasets releases it works with.
TRANSFORMERS_4_STACK = ["huggingface-hub==0.36.0", "peft==0.15.2", "datasets==3.6.0"]
OPENRLHF_RELEASES = {
    "0.6.4": ("4.50.0", "0.16.9", [*TRANSFORMERS_4_STACK, "tokenizers==0.21.4"]),  # GPTLMLoss: reported only
    "0.7.5": ("4.51.3", "0.16.9", [*TRANSFORMERS_4_STACK, "tokenizers==0.21.4"]),
    "0.8.11": ("4.56.1", "0.18.3", TRANSFORMERS_4_STACK),
    "0.9.10": ("5.5.0", "0.18.9", []),
    "0.10.2": ("5.5.4", "0.18.9", []),
    "0.10.3": ("5.7.0", "0.18.9", []),
    "0.10.4": ("5.7.0", "0.19.0", []),
    "0.11.1": ("5.15.0", "0.19.8", []),
    "0.11.2": ("5.15.0", "0.19.8", []),
}
# Releases only the full tier installs and tests: 0.8.11 is the 0.8.x-0.9.x code that 0.9.10
# covers in CI; 0.11.1 is openrlhf-sft-epoch-boundary's newest affected release, the same code
# as 0.10.4 (CI's).
OPENRLHF_FULL_ONLY = {"0.8.11", "0.11.1"}
# The DeepSpeed releases of the tests with --adam_offload (the paper's stack and the fixed one).
OPENRLHF_OFFLOAD_DEEPSPEED = {"0.18.9", "0.19.0"}
# A DeepSpeed release for a PPO critic run that must already be right (dynamic batching under
# ZeRO-2 left unchanged): before the output hooks of 0.18.3 (the critic returns its backbone's
# output beside the values) and the ZeRO-2 bugs of 0.17.6-0.18.2. The other critic tests run
# on each release's own DeepSpeed (tests/openrlhf_releases/test_ppo.py).
OPENRLHF_CRITIC_DEEPSPEED = "0.16.9"
# What OpenRLHF's SFT and PPO imports need (it pins ray, flash-attn and deepspeed
# exactly, so it is installed without dependencies).
OPENRLHF_DEPENDENCIES = ["transformers==5.15.0", "peft", "accelerate", "datasets", "einops", "jsonlines",
                         "optree>=0.15.0", "tensorboard", "torchmetrics", "torchdata", "pylatexenc", "sympy",
                         "aiohttp", "pillow", "ray==2.48.0"]


@nox.session(python="3.11")
@budgeted
def openrlhf(session):
    """Real OpenRLHF releases (the SFT entry point) with DeepSpeed on CPU. Each release
    and the transformers it pins sit in their own folder under ~/.cache/gradfix/openrlhf."""
    install_cached(session, "torch==2.13.0", group="torch")  # alone first: the local CPU wheel
    install_cached(session, *TEST_REQUIREMENTS, "pytest-xdist", "wrapt>=2,<3", *DEEPSPEED_DEPENDENCIES,
                   *OPENRLHF_DEPENDENCIES)
    install_gradfix(session)
    matrix = {release: stack for release, stack in OPENRLHF_RELEASES.items()
              if FULL or release not in OPENRLHF_FULL_ONLY}
    deepspeed = sorted({deepspeed for _, deepspeed, _ in matrix.values()} | {OPENRLHF_CRITIC_DEEPSPEED})
    install_deepspeed_releases(session, deepspeed)
    # OpenRLHF's Adam on the CPU accelerator: FusedAdam, DeepSpeedCPUAdam with --adam_offload.
    prebuild_ops(session, deepspeed, ["FusedAdamBuilder"])
    prebuild_ops(session, [d for d in deepspeed if d in OPENRLHF_OFFLOAD_DEEPSPEED], ["CPUAdamBuilder"])
    install_folders_concurrently(session, [(CACHE / "openrlhf" / f"orl-{release}",
                                            [f"openrlhf=={release}", f"transformers=={transformers}", *extras])
                                           for release, (transformers, _, extras) in matrix.items()])
    stacks = {release: deepspeed for release, (_, deepspeed, _) in matrix.items()}
    run_release_tests(session, "tests/openrlhf_releases", ["-q", "-n", str(min(os.cpu_count() or 1, 2))],
                      env={"GRADFIX_OPENRLHF_RELEASES": json.dumps(stacks), "GRADFIX_CACHE": str(CACHE),
                           "GRADFIX_OPENRLHF_CRITIC_DEEPSPEED": OPENRLHF_CRITIC_DEEPSPEED},
                      releases={"openrlhf": stacks})


# transformers release -> what its folder also needs (the hub, tokenizers and accelerate it
# was released with). The venv itself holds the newest transformers and accelerate; each
# folder shadows them on PYTHONPATH. hf-dp-token-average: 4.46.2 (oldest affected), 4.48.3
# (last before compute_loss_func was scaled), 4.51.3, 4.53.3 (newest affected), 4.54.0
# (first fixed) and the newest release; 4.48.0 for hf-num-items-not-passed (that release only).
TRANSFORMERS_RELEASES = {
    "4.46.2": ["tokenizers==0.20.3", "huggingface-hub==0.26.5", "accelerate==1.1.1"],
    "4.48.0": ["tokenizers==0.21.0", "huggingface-hub==0.28.1", "accelerate==1.3.0"],
    "4.48.3": ["tokenizers==0.21.0", "huggingface-hub==0.28.1", "accelerate==1.3.0"],
    "4.51.3": ["tokenizers==0.21.4", "huggingface-hub==0.30.2", "accelerate==1.6.0"],
    "4.53.3": ["tokenizers==0.21.4", "huggingface-hub==0.34.4", "accelerate==1.9.0"],
    "4.54.0": ["tokenizers==0.21.4", "huggingface-hub==0.34.4", "accelerate==1.9.0"],
}
# transformers.trainer imports datasets when it is installed; the venv's (for the newest
# TRL) needs a newer huggingface-hub than these folders hold, so each carries its own.
DATASETS_FOR_HUB_0 = "datasets==4.3.0"
TRANSFORMERS_NEWEST = ["transformers==5.24.0", "accelerate==1.15.0", "trl==1.16.0"]
# DeepSpeed for the Trainer's DeepSpeed path: 0.16.4 has none of the DeepSpeed bugs in those
# configurations; 0.18.2 has ds-zero2-offload-ga (TRL SFT + ZeRO-2 offload end to end).
TRANSFORMERS_DEEPSPEED = ["0.16.4", "0.18.2", "0.19.2"]  # 0.19.2: the output hooks (ds-output-hooks-*)
TRANSFORMERS_4_NEEDS = ["requests", "httpx"]  # huggingface-hub < 1.0 and datasets 4 import them
# TRL release -> what its folder also needs. GRPO: 0.22.2 (oldest affected by both GRPO
# patches; it needs transformers 4), 1.8.0, 1.9.0 (window bug only), 1.9.1 (first fixed)
# and the venv's newest.
TRL_RELEASES = {
    "0.22.2": ["transformers==4.57.6", "huggingface-hub==0.36.0", "tokenizers==0.22.1", DATASETS_FOR_HUB_0],
    "1.8.0": [],
    "1.9.0": [],
    "1.9.1": [],
}
# TRL alone, put in front of a transformers folder: 0.13.0 (the last release whose DPO-family
# trainers rely on Trainer to divide their loss by GA) and 0.14.0 (works around it itself).
TRL_CUSTOM_LOSS_RELEASES = ["0.13.0", "0.14.0"]
# Axolotl 0.6.0 without its GPU dependencies, with the peft it imports and transformers 4.46.3
# (the release whose training loop its DeepSpeed patch edits), in front of the 4.46.2 folder.
AXOLOTL = ["axolotl==0.6.0", "peft==0.14.0", "transformers==4.46.3"]


@nox.session(python="3.11")
@budgeted
def transformers(session):
    """Real transformers and TRL releases: Trainer on CPU with two data-parallel ranks
    (gloo) and through DeepSpeed, TRL's SFTTrainer and GRPOTrainer. One torch venv with
    the newest releases; the others in folders under ~/.cache/gradfix/transformers and
    ~/.cache/gradfix/trl."""
    install_cached(session, "torch==2.13.0", group="torch")  # alone first: the local CPU wheel
    install_cached(session, *TEST_REQUIREMENTS, "pytest-xdist", "wrapt>=2,<3", *TRANSFORMERS_NEWEST,
                   *TRANSFORMERS_4_NEEDS, *DEEPSPEED_DEPENDENCIES)
    install_gradfix(session)
    install_deepspeed_releases(session, TRANSFORMERS_DEEPSPEED)
    install_folders_concurrently(session, [
        *[(CACHE / "transformers" / f"tf-{release}", [f"transformers=={release}", *stack, DATASETS_FOR_HUB_0])
          for release, stack in TRANSFORMERS_RELEASES.items()],
        *[(CACHE / "trl" / f"trl-{release}", [f"trl=={release}", *stack]) for release, stack in TRL_RELEASES.items()],
        *[(CACHE / "trl" / f"trl-alone-{release}", [f"trl=={release}"]) for release in TRL_CUSTOM_LOSS_RELEASES],
        (CACHE / "axolotl" / "axolotl-0.6.0", AXOLOTL)])
    newest = dict(pin.split("==") for pin in TRANSFORMERS_NEWEST)
    transformers_releases = {r: str(CACHE / "transformers" / f"tf-{r}") for r in TRANSFORMERS_RELEASES}
    trl_releases = {release: str(CACHE / "trl" / f"trl-{release}") for release in TRL_RELEASES}
    # loadgroup: a release's tests share one xdist worker, so each planned launch runs once (tfrun.plan)
    run_release_tests(session, "tests/transformers_releases",
                      ["-q", "-n", str(min(os.cpu_count() or 1, 2)), "--dist", "loadgroup"], env={
        "GRADFIX_TF_RELEASES": json.dumps({**transformers_releases, newest["transformers"]: ""}),
        "GRADFIX_TRL_RELEASES": json.dumps({**trl_releases, newest["trl"]: ""}),
        "GRADFIX_TRL_CUSTOM_LOSS_RELEASES": json.dumps(
            {release: str(CACHE / "trl" / f"trl-alone-{release}") for release in TRL_CUSTOM_LOSS_RELEASES}),
        "GRADFIX_AXOLOTL": json.dumps({"folder": str(CACHE / "axolotl" / "axolotl-0.6.0"),
                                       "stack": str(CACHE / "transformers" / "tf-4.46.2")}),
        "GRADFIX_CACHE": str(CACHE)}, releases={
        "transformers": [*TRANSFORMERS_RELEASES, newest["transformers"]], "trl": [*TRL_RELEASES, newest["trl"]],
        "trl (custom losses)": TRL_CUSTOM_LOSS_RELEASES, "deepspeed": TRANSFORMERS_DEEPSPEED})


# LLaMA-Factory release -> (what its folder holds besides it, the DeepSpeed release of its
# DeepSpeed runs). The venv holds 0.9.3 (the first release with lf-mm-token-sum) and the stack
# pip resolves for it: transformers 4.52.4 (hf-dp-token-average affected) and DeepSpeed 0.16.9,
# the newest it allows (ds-zero2-offload-ga affected). 0.9.5, the newest release, shadows it
# with transformers 4.57.6 and the accelerate, peft and TRL it allows; DeepSpeed 0.18.2.
LLAMAFACTORY_VENV = ["llamafactory==0.9.3", "transformers==4.52.4", "accelerate==1.7.0", "peft==0.15.2",
                     "datasets==3.6.0", "tokenizers==0.21.1", "pyarrow<21"]  # pyarrow 21+ needs numpy 2; 0.9.3 pins < 2
LLAMAFACTORY_RELEASES = {
    "0.9.3": ([], "0.16.9"),
    "0.9.5": (["transformers==4.57.6", "huggingface-hub==0.36.0", "tokenizers==0.22.1", "accelerate==1.11.0",
               "peft==0.18.1", "trl==0.24.0"], "0.18.2"),
}


@nox.session(python="3.11")
@budgeted
def llamafactory(session):
    """Real LLaMA-Factory releases through `llamafactory-cli train` on CPU: multimodal
    (processor) SFT, DeepSpeed ZeRO-2 with CPU offload on two ranks. 0.9.3 in the venv,
    newer releases in folders under ~/.cache/gradfix/llamafactory."""
    install_cached(session, "torch==2.13.0", group="torch")  # alone first: the local CPU wheel
    install_cached(session, *TEST_REQUIREMENTS, "pytest-xdist", "wrapt>=2,<3", *DEEPSPEED_DEPENDENCIES,
                   *LLAMAFACTORY_VENV)
    install_gradfix(session)
    install_deepspeed_releases(session, sorted({deepspeed for _, deepspeed in LLAMAFACTORY_RELEASES.values()}))
    stacks = {}
    for release, (extras, deepspeed) in LLAMAFACTORY_RELEASES.items():
        folder = ""
        if extras:
            folder = str(CACHE / "llamafactory" / f"lf-{release}")
            install_into_folder(session, Path(folder), f"llamafactory=={release}", *extras)
        stacks[release] = {"folder": folder, "deepspeed": deepspeed}
    run_release_tests(session, "tests/llamafactory_releases", ["-q", "-n", str(min(os.cpu_count() or 1, 2))],
                      env={"GRADFIX_LF_RELEASES": json.dumps(stacks), "GRADFIX_CACHE": str(CACHE)},
                      releases={"llamafactory": stacks})


FULL_MATRIX_SESSIONS = ["deepspeed", "openrlhf", "transformers", "llamafactory"]


@nox.session(python=False)
def full_matrix(session):
    """Periodic (not part of the default run): the framework sessions on the whole release
    matrix (GRADFIX_TEST_TIER=full), each test's outcome recorded in patches/full_matrix.json,
    which the fast tier checks. Run it when patches or the release lists change, and commit
    the record. Sessions to run: posargs (default: FULL_MATRIX_SESSIONS)."""
    session.run(sys.executable, "-m", "nox", "-s", *(session.posargs or FULL_MATRIX_SESSIONS),
                env={"GRADFIX_TEST_TIER": "full"}, external=True)


@nox.session(python="3.11")
def sweep(session):
    """Release sweep of DeepSpeed: every release from 0.14.0 through each patch's gates, into
    patches/sweep.json (not part of the default run: it installs every release; run it when
    patches or releases change, then commit the table and `python -m gradfix._generate`)."""
    install_cached(session, "torch==2.13.0", group="torch")  # alone first: the local CPU wheel
    install_cached(session, *TEST_REQUIREMENTS, "wrapt>=2,<3", *DEEPSPEED_DEPENDENCIES)
    install_gradfix(session)
    session.run("python", "tests/release_sweep/sweep.py", "deepspeed", "--since", "0.14.0", *session.posargs)


# The conformance matrix covers DeepSpeed from here to the newest release that imports with
# the tests' torch (patches/sweep.json tells which do).
CONFORMANCE_SINCE = "0.14.5"


def conformance_releases():
    """Every DeepSpeed release from CONFORMANCE_SINCE that the committed sweep imported."""
    from packaging.version import Version

    rows = json.loads((HERE / "patches" / "sweep.json").read_text())["deepspeed"]["releases"]
    unimportable = {release for release, verdicts in rows.items()
                    if any(isinstance(cell, dict) and cell["reason"].startswith("cannot import")
                           for cell in verdicts.values())}
    return sorted((r for r in rows if Version(r) >= Version(CONFORMANCE_SINCE) and r not in unimportable), key=Version)


@nox.session(python="3.11")
def conformance(session):
    """Periodic (not part of the default run): the conformance matrix of DeepSpeed against
    plain PyTorch (gradfix.conformance), every release since CONFORMANCE_SINCE or the
    releases given as posargs, merged into patches/conformance.json; then the README
    summary is regenerated. Commit both; the fast tier checks the matrix against the catalog."""
    install_cached(session, "torch==2.13.0", group="torch")  # alone first: the local CPU wheel
    install_cached(session, *TEST_REQUIREMENTS, "wrapt>=2,<3", *DEEPSPEED_DEPENDENCIES)
    install_gradfix(session)
    releases = session.posargs or conformance_releases()
    folder = install_deepspeed_releases(session, releases)
    session.run("python", "-m", "gradfix.conformance", "run", "--folder", str(folder), "--releases",
                ",".join(releases))
    session.run("python", "-m", "gradfix._generate")


# The DeepSpeed release of the Trainer cases that go through DeepSpeed: none of the DeepSpeed
# bugs in ZeRO-2 fp32 without offload, so only the Trainer's show.
CONFORMANCE_TRAINER_DEEPSPEED = "0.16.4"


@nox.session(python=False)
def conformance_transformers(session):
    """Periodic: the Trainer cases of the conformance matrix on the `transformers` session's
    releases (run that session first; it installs them) or those given as posargs,
    merged into patches/conformance.json; then the README summary is regenerated."""
    python = session_python(session, "transformers", "the Trainer conformance matrix")
    newest = dict(pin.split("==") for pin in TRANSFORMERS_NEWEST)["transformers"]
    releases = session.posargs or [*TRANSFORMERS_RELEASES, newest]
    session.run(str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(HERE), external=True)
    session.run(str(python), "-m", "gradfix.conformance", "run", "--package", "transformers",
                "--folder", str(CACHE / "transformers"), "--releases", ",".join(releases),
                "--deepspeed-folder", str(CACHE / "deepspeed" / f"ds-{CONFORMANCE_TRAINER_DEEPSPEED}"), external=True)
    session.run(str(python), "-m", "gradfix._generate", external=True)


def session_python(session, name, user):
    """The interpreter of the default session ``name``'s environment, which ``user`` (a
    sweep, a benchmark) runs in; stops with what to run first when it is not built yet."""
    python = CACHE / "nox" / name / "bin" / "python"
    if not python.exists():
        session.error(f"run `python -m nox -s {name}` first: {user} uses its environment")
    return python


@nox.session(python=False)
def sweep_llamafactory(session):
    """Release sweep of LLaMA-Factory 0.8.0 and later, in the `llamafactory` session's
    environment (run that session first): 0.9.3 and older on its transformers 4.52.4, newer
    releases on the 0.9.5 folder's transformers 4.57.6."""
    python = session_python(session, "llamafactory", "the sweep")
    script = ["tests/release_sweep/sweep.py", "llamafactory"]
    session.run(str(python), *script, "--since", "0.8.0", "--until", "0.9.3", external=True)
    session.run(str(python), *script, "--since", "0.9.4", "--stack", str(CACHE / "llamafactory" / "lf-0.9.5"),
                "--stack", str(HERE / "tests" / "llamafactory_releases" / "stubs"), external=True)


# transformers releases -> a folder whose tokenizers, huggingface-hub and accelerate they import
# with (the `transformers` session's folders; the release itself is put in front of it).
TRANSFORMERS_SWEEP = [("4.45.0", "4.46.3", "transformers/tf-4.46.2"), ("4.47.0", "4.53.3", "transformers/tf-4.51.3"),
                      ("4.54.0", "4.55.4", "transformers/tf-4.53.3"), ("4.56.0", "4.57.6", "trl/trl-0.22.2"),
                      ("5.0.0", None, None)]


@nox.session(python=False)
def sweep_transformers(session):
    """Release sweep of transformers 4.45.0 and later, in the `transformers` session's
    environment (run that session first; 5.x on the venv's own stack)."""
    python = session_python(session, "transformers", "the sweep")
    for since, until, stack in TRANSFORMERS_SWEEP:
        options = ["--since", since]
        options += ["--until", until] if until else []
        options += ["--stack", str(CACHE / stack)] if stack else []
        session.run(str(python), "tests/release_sweep/sweep.py", "transformers", *options, external=True)


# TRL releases -> the folder they import with: the 0.x line on the `transformers` session's
# TRL 0.22.2 folder (transformers 4.57.6), the 1.x line on its venv (transformers 5).
TRL_SWEEP = [("0.20.0", "0.29.1", "trl/trl-0.22.2"), ("1.0.0", None, None)]


@nox.session(python=False)
def sweep_trl(session):
    """Release sweep of TRL 0.20.0 and later, in the `transformers` session's environment
    (run that session first)."""
    python = session_python(session, "transformers", "the sweep")
    for since, until, stack in TRL_SWEEP:
        options = ["--since", since, *(["--until", until] if until else [])]
        options += ["--stack", str(CACHE / stack)] if stack else []
        session.run(str(python), "tests/release_sweep/sweep.py", "trl", *options, external=True)


@nox.session(python=False)
def sweep_accelerate(session):
    """Release sweep of accelerate 0.25.0 and later, in the `transformers` session's venv
    (run that session first; each release is put in front of the venv's accelerate)."""
    python = session_python(session, "transformers", "the sweep")
    session.run(str(python), "tests/release_sweep/sweep.py", "accelerate", "--since", "0.25.0", external=True)


# OpenRLHF releases -> the tested release whose folder (transformers pin) they import with, and
# the DeepSpeed release beside it (the `openrlhf` session's folders).
OPENRLHF_SWEEP = [("0.5.0", "0.6.4.post99", "0.6.4"), ("0.7.0", "0.7.5.post99", "0.7.5"),
                  ("0.8.0", "0.8.11.post99", "0.8.11"), ("0.9.0", "0.9.10.post99", "0.9.10"),
                  ("0.10.0", "0.10.3.post99", "0.10.3"), ("0.10.4", None, "0.11.2")]


@nox.session(python=False)
def sweep_openrlhf(session):
    """Release sweep of OpenRLHF 0.5.0 and later, in the `openrlhf` session's environment
    (run that session first), with the import-only flash-attn and vLLM stand-ins."""
    python = session_python(session, "openrlhf", "the sweep")
    stubs = HERE / "tests" / "openrlhf_releases" / "stubs"
    for _, _, tested in OPENRLHF_SWEEP:
        if not (CACHE / "openrlhf" / f"orl-{tested}").is_dir():
            session.error(f"run `python -m nox -s full_matrix -- openrlhf` first: the sweep imports releases "
                          f"with the folders of the full tier (orl-{tested} is missing)")
    for since, until, tested in OPENRLHF_SWEEP:
        deepspeed = OPENRLHF_RELEASES[tested][1]
        options = ["--since", since, *(["--until", until] if until else []), "--stack", str(stubs),
                   "--stack", str(CACHE / "openrlhf" / f"orl-{tested}"),
                   "--stack", str(CACHE / "deepspeed" / f"ds-{deepspeed}")]
        session.run(str(python), "tests/release_sweep/sweep.py", "openrlhf", *options, external=True)


@nox.session(python="3.11")
def bench_deepspeed(session):
    """Step time of patched buggy DeepSpeed vs the first fixed release (needs the
    releases the `deepspeed` session installs; not part of the default run)."""
    install_cached(session, "torch==2.13.0", group="torch")
    install_cached(session, *TEST_REQUIREMENTS, "pytest-xdist", "wrapt>=2,<3", *DEEPSPEED_DEPENDENCIES)
    install_gradfix(session)
    session.run("python", "benchmarks/deepspeed_step.py", *session.posargs)


@nox.session(python=False)
def bench_openrlhf(session):
    """Step time of OpenRLHF 0.10.3 / 0.9.10 + gradfix vs 0.10.4's own normalisation. Runs in the
    `openrlhf` session's environment (run that session first); not part of the default run."""
    python = session_python(session, "openrlhf", "this benchmark")
    session.run(str(python), "benchmarks/openrlhf_sft_step.py", *session.posargs, external=True,
                env={"GRADFIX_CACHE": str(CACHE)})


@nox.session(python=False)
def bench_openrlhf_window(session):
    """The window normaliser's own cost per step: gradfix's read-ahead on OpenRLHF 0.10.3 vs
    0.10.4's built-in one, profiled in the same SFT run. Runs in the `openrlhf` session's
    environment (run that session first); not part of the default run."""
    python = session_python(session, "openrlhf", "this benchmark")
    session.run(str(python), "benchmarks/openrlhf_window_cost.py", *session.posargs, external=True,
                env={"GRADFIX_CACHE": str(CACHE)})


@nox.session(python="3.11")
def bench(session):
    """Start-up and import-cost benchmarks (not part of the default run)."""
    install_cached(session, "packaging>=21", "wrapt>=2,<3")
    session.run("python", "benchmarks/startup.py", *session.posargs)
    session.run("python", "benchmarks/import_cost.py", *session.posargs)


@nox.session(python="3.11")
def signature(session):
    """Grad-norm and loss curves of SFT with ZeRO-2 + offload + GA 8: buggy, patched,
    first fixed (benchmarks/results/signature.png; needs the `deepspeed` session's
    releases; not part of the default run)."""
    install_cached(session, "torch==2.13.0", group="torch")
    install_cached(session, *TEST_REQUIREMENTS, "pytest-xdist", "wrapt>=2,<3", *DEEPSPEED_DEPENDENCIES)
    install_cached(session, "matplotlib", group="plotting")
    install_gradfix(session)
    session.run("python", "benchmarks/signature.py", *session.posargs)
