"""Build the wheel, install it into fresh virtual environments and check the
start-up bootstrap in new interpreters, including deliberately broken installs."""

import contextlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gradfix import __version__ as VERSION

import toy
from helpers import REPO, clean_env

pytestmark = pytest.mark.slow

PASS = "pass"
IMPORTED = "import sys; print('IMPORTED', sorted(m for m in ('gradfix', '_gradfix_bootstrap') if m in sys.modules))"


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)])
    (path,) = out.glob("gradfix-*.whl")
    return path


class Venv:
    def __init__(self, root: Path):
        self.root = root
        self.python = root / "bin" / "python"
        self.site = Path(_run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())

    def run(self, code, toy_release=("1.0", "buggy"), extra_paths=(), catalog=True, **env):
        paths = [str(toy.FIXTURES), *map(str, extra_paths)]
        if toy_release:
            paths.insert(0, str(toy.install(self.root.parent / "toys", *toy_release)))
        if catalog:
            env.setdefault("GRADFIX_CATALOG_PATH", str(toy.CATALOG))
        variables = clean_env(PYTHONPATH=os.pathsep.join(paths), **env)
        return subprocess.run([str(self.python), "-c", code], cwd=self.root, env=variables,
                              capture_output=True, text=True, timeout=120)


def _venv(where: Path, *install) -> Venv:
    _run([sys.executable, "-m", "venv", str(where)])
    _run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", *install])
    return Venv(where)


@pytest.fixture(scope="session")
def venv(tmp_path_factory, wheel) -> Venv:
    return _venv(tmp_path_factory.mktemp("wheel-install") / "venv", str(wheel))


def test_wheel_ships_the_startup_files_and_the_catalog(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"gradfix.pth", "gradfix.start", "_gradfix_bootstrap.py"} <= names
    assert "gradfix/_catalog/README.md" in names and "gradfix/cli.py" in names
    assert not any(name.startswith(("gradfix/_site", "patches/", "tests/")) for name in names)
    start = zipfile.ZipFile(wheel).read("gradfix.start").decode().strip()
    assert start == "_gradfix_bootstrap:main"


def test_gradfix_1_activates_with_no_import(venv):
    code = toy.WORKLOAD + "import sys\nprint('STATES', {s.id: s.state for s in sys.modules['gradfix'].status()})\n"
    proc = venv.run(code, GRADFIX="1")
    assert f"'{toy.PATCH_ID}': 'applied'" in proc.stdout, proc.stderr
    buggy = venv.run(toy.WORKLOAD)
    assert buggy.stdout != proc.stdout.splitlines()[0]  # without GRADFIX the bug stays


def test_unset_imports_nothing(venv):
    proc = venv.run(IMPORTED)
    assert proc.stdout.strip() == "IMPORTED []" and proc.stderr == ""
    off = venv.run(IMPORTED, GRADFIX="0")
    assert off.stdout.strip() == "IMPORTED []" and off.stderr == ""


def test_pep_829_start_entry_point(venv):
    # Python 3.15 resolves gradfix.start with pkgutil.resolve_name and calls it; emulate that.
    code = "import pkgutil, sys; pkgutil.resolve_name(open(sys.argv[1]).read().strip())()\n" + IMPORTED
    entry = str(venv.site / "gradfix.start")
    run = lambda **env: subprocess.run([str(venv.python), "-S", "-c", code, entry], capture_output=True, text=True,
                                       env=clean_env(PYTHONPATH=str(venv.site), **env))
    assert run().stdout.strip() == "IMPORTED ['_gradfix_bootstrap']"
    assert run(GRADFIX="1").stdout.strip() == "IMPORTED ['_gradfix_bootstrap']"  # waits for a framework
    assert run(GRADFIX="1", GRADFIX_CATALOG_PATH=str(toy.CATALOG)).stdout.strip() == \
        "IMPORTED ['_gradfix_bootstrap', 'gradfix']"


FIRST_IMPORT = (
    IMPORTED + "\nimport json, email.message\n" + IMPORTED + "\n"
    "import trl\nprint('ACTIVE BEFORE ITS CODE', trl.ACTIVE_BEFORE_ITS_CODE)\n"
    "import gradfix\nprint('STATE', {s.id: s.state for s in gradfix.status()}['trl-grpo-window-normaliser'])\n"
    "print('STILL WATCHING', [type(f).__name__ for f in sys.meta_path if 'Framework' in type(f).__name__])\n"
)


def test_gradfix_1_activates_at_the_first_import_of_a_patched_framework(venv, tmp_path):
    """With the built-in catalog, GRADFIX=1 leaves a process that imports no framework
    alone (it costs a few hundred microseconds: benchmarks/import_cost.py), and the first
    import of a package the catalog patches activates gradfix before that package's code
    runs. A stand-in ``trl`` (no metadata, so its patches are armed on source-checkout
    terms) shows the order; the framework sessions run real releases with GRADFIX=1."""
    stand_in = tmp_path / "stand_in" / "trl"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("import sys\nACTIVE_BEFORE_ITS_CODE = 'gradfix' in sys.modules\n")
    proc = venv.run(FIRST_IMPORT, toy_release=None, extra_paths=[stand_in.parent], catalog=False, GRADFIX="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "IMPORTED ['_gradfix_bootstrap']",
        "IMPORTED ['_gradfix_bootstrap']",  # the standard library does not wake it
        "ACTIVE BEFORE ITS CODE True",
        "STATE armed",
        "STILL WATCHING []",
    ], proc.stderr
    unset = venv.run("import sys, trl\n" + IMPORTED, toy_release=None, extra_paths=[stand_in.parent], catalog=False)
    assert unset.stdout.strip() == "IMPORTED []" and not unset.stderr  # GRADFIX unset: the stand-in alone


def test_console_script_and_doctor(venv):
    proc = subprocess.run([str(venv.root / "bin" / "gradfix"), "doctor"], capture_output=True, text=True,
                          env=clean_env(), cwd=venv.root)
    assert proc.returncode == 0, proc.stdout
    assert f"start-up file   {venv.site / 'gradfix.pth'}" in proc.stdout
    assert str(venv.site / "gradfix" / "_catalog") in proc.stdout


def _one_warning(proc):
    """The process ran; stderr holds exactly one gradfix warning (next to, at
    most, gradfix's summary line) and no traceback."""
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    warnings = [line for line in lines if line.startswith("gradfix: ")]
    summaries = [line for line in lines if line.startswith(f"gradfix {VERSION}: ")]
    assert len(warnings) == 1 and len(warnings) + len(summaries) == len(lines), proc.stderr
    return warnings[0]


@contextlib.contextmanager
def hidden(path: Path):
    """Simulate a broken install: ``path`` is missing while the block runs."""
    away = path.with_name(path.name + ".hidden")
    path.rename(away)
    try:
        yield
    finally:
        away.rename(path)


def test_missing_dependency_fails_the_patch_not_the_program(venv):
    with hidden(venv.site / "wrapt"):
        proc = venv.run(toy.WORKLOAD, GRADFIX="1")
        assert proc.returncode == 0 and "RESULT" in proc.stdout and "Traceback" not in proc.stderr
        assert "failed: toy-accumulate-drop (cannot load gradfix's patcher (No module named 'wrapt')" in proc.stderr
        strict = venv.run(toy.WORKLOAD, GRADFIX="1", GRADFIX_STRICT="1")
        assert strict.returncode == 1 and "GradfixStrictError" in strict.stderr
    with hidden(venv.site / "packaging"):
        proc = venv.run(toy.WORKLOAD, GRADFIX="1")
        assert proc.returncode == 0 and "RESULT" in proc.stdout and "Traceback" not in proc.stderr
        assert "toy-accumulate-drop.toml: cannot validate: No module named 'packaging'" in proc.stderr


def test_broken_package_costs_one_line_and_strict_ends_the_process(venv):
    init = venv.site / "gradfix" / "__init__.py"
    saved = init.read_bytes()
    init.write_text("raise RuntimeError('simulated broken install')\n")
    try:
        line = _one_warning(venv.run(PASS, GRADFIX="1"))
        assert "could not start (RuntimeError: simulated broken install)" in line and "gradfix doctor" in line
        strict = venv.run(PASS, GRADFIX="1", GRADFIX_STRICT="1")
        assert strict.returncode == 78 and "cannot start under GRADFIX_STRICT=1" in strict.stderr
    finally:
        init.write_bytes(saved)


def test_missing_package_or_bootstrap_module_does_not_break_python(venv):
    with hidden(venv.site / "gradfix"):
        assert "could not start (ModuleNotFoundError" in _one_warning(venv.run(PASS, GRADFIX="1"))
    with hidden(venv.site / "_gradfix_bootstrap.py"):
        proc = venv.run(PASS, GRADFIX="1")
        assert proc.returncode == 0 and proc.stderr == ""  # an orphaned .pth stays silent


def test_bad_catalog_file_costs_one_line(venv):
    bad = venv.site / "gradfix" / "_catalog" / "broken-entry.toml"
    bad.write_text('id = "broken-entry"\n')
    try:
        line = _one_warning(venv.run(PASS, toy_release=None, GRADFIX="1"))
        assert "broken-entry.toml: field 'package': missing" in line
    finally:
        bad.unlink()


def test_editable_install_bootstrap(tmp_path):
    editable = _venv(tmp_path / "editable", "-e", str(REPO))
    assert (editable.site / "gradfix.pth").is_file()
    proc = editable.run(toy.WORKLOAD + "import sys\nprint('FROM', sys.modules['gradfix'].__file__)\n", GRADFIX="1")
    assert f"FROM {REPO / 'gradfix' / '__init__.py'}" in proc.stdout, proc.stderr
    assert "applied: toy-accumulate-drop" in proc.stderr
