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
import sys
from glob import glob
from pathlib import Path

import nox

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GRADFIX_CACHE", Path.home() / ".cache" / "gradfix"))

nox.options.envdir = str(CACHE / "nox")
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "tests_wrapt1", "tests_oldest_python"]
nox.options.error_on_missing_interpreters = False

TEST_REQUIREMENTS = ["pytest>=7", "packaging>=21"]


def _oldest_python():
    """Python 3.9 (the oldest supported), from PATH or pyenv, if this machine has it."""
    found = sorted(glob(str(Path.home() / ".pyenv" / "versions" / "3.9*" / "bin" / "python3.9")))
    return found[-1] if found else "3.9"


def install_cached(session, *requirements):
    """pip install ``requirements`` unless this environment already holds exactly them."""
    key = hashlib.sha256(json.dumps([sys.version, *requirements]).encode()).hexdigest()
    stamp = Path(session.virtualenv.location) / ".gradfix-requirements"
    if stamp.exists() and stamp.read_text() == key:
        return
    session.install(*requirements)
    stamp.write_text(key)


def install_gradfix(session):
    """Build gradfix into a wheel and install it, replacing any earlier build."""
    dist = Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(HERE))
    (wheel,) = dist.glob("gradfix-*.whl")
    session.install("--no-deps", "--force-reinstall", str(wheel))
    wheel.unlink()


@nox.session(python="3.11")
def tests(session):
    """Engine, CLI and packaging tests with the newest wrapt (2.x)."""
    install_cached(session, *TEST_REQUIREMENTS, "wrapt>=2,<3", "tomli>=1.1; python_version < '3.11'")
    install_gradfix(session)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python="3.11")
def tests_wrapt1(session):
    """The same without the slow packaging tests, on wrapt 1.x."""
    install_cached(session, *TEST_REQUIREMENTS, "wrapt>=1.14,<2")
    install_gradfix(session)
    session.run("pytest", "-q", "-m", "not slow", *session.posargs)


@nox.session(python=_oldest_python())
def tests_oldest_python(session):
    """Python 3.9 with the oldest supported wrapt, and tomli instead of tomllib."""
    install_cached(session, *TEST_REQUIREMENTS, "wrapt==1.14.*", "tomli>=1.1")
    install_gradfix(session)
    session.run("pytest", "-q", "-m", "not slow", *session.posargs)


@nox.session(python="3.11")
def bench(session):
    """Start-up and import-cost benchmarks (not part of the default run)."""
    install_cached(session, "packaging>=21", "wrapt>=2,<3")
    session.run("python", "benchmarks/startup.py", *session.posargs)
    session.run("python", "benchmarks/import_cost.py", *session.posargs)
