"""Fault injection on activation, each scenario in a fresh interpreter against the toy
package gftoy: the user's program must run unchanged (exit code, output), each problem
gives one clear warning, and every patch's state says what happened; with
GRADFIX_STRICT=1 a clear error instead."""

import pytest

import toy
from toy import PATCH_ID, WORKLOAD

STATUS = """
import json, sys
_gradfix = sys.modules.get("gradfix")
print("STATUS", json.dumps({s.id: [s.state, s.reason] for s in _gradfix.status()} if _gradfix else None))
"""


@pytest.fixture
def reference(run_python):
    return run_python(WORKLOAD, toy_release=("2.0", "fixed"), catalogs=()).value("RESULT")


@pytest.fixture
def unpatched(run_python):
    return run_python(WORKLOAD, env={"GRADFIX": "0"}).value("RESULT")


def gradfix_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("gradfix")]


def test_wrapt_missing(run_python, tmp_path, unpatched):
    """wrapt cannot be imported: the patch fails with advice, the program computes as
    without gradfix and exits normally."""
    shadow = tmp_path / "no_wrapt" / "wrapt"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'wrapt'\", name='wrapt')\n")
    env = {"GRADFIX": "1"}
    run = run_python(WORKLOAD + STATUS, env=env, extra_paths=(shadow.parent,))
    assert run.returncode == 0
    assert run.value("RESULT") == unpatched
    state, reason = run.value("STATUS")[PATCH_ID]
    assert state == "failed" and "wrapt" in reason
    strict = run_python(WORKLOAD, env={**env, "GRADFIX_STRICT": "1"}, extra_paths=(shadow.parent,))
    assert strict.returncode != 0 and "wrapt" in strict.stderr


def test_patch_module_raising_on_import(run_python, tmp_path, unpatched):
    fixes = tmp_path / "raising_fixes"
    fixes.mkdir()
    (fixes / "gf_raising_fix.py").write_text("raise RuntimeError('the fix module is broken (fault injection)')\n")
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    source = (toy.CATALOG / f"{PATCH_ID}.toml").read_text()
    (catalog / f"{PATCH_ID}.toml").write_text(source.replace("gftoy_fixes.accumulate_drop", "gf_raising_fix"))
    run = run_python(WORKLOAD + STATUS, catalogs=(catalog,), env={"GRADFIX": "1"}, extra_paths=(fixes,))
    assert run.returncode == 0 and run.value("RESULT") == unpatched
    state, reason = run.value("STATUS")[PATCH_ID]
    assert state == "failed" and "the fix module is broken" in reason
    strict = run_python(WORKLOAD, catalogs=(catalog,), env={"GRADFIX": "1", "GRADFIX_STRICT": "1"},
                        extra_paths=(fixes,))
    assert strict.returncode != 0 and PATCH_ID in strict.stderr


def test_target_module_raising_on_import(run_python, tmp_path):
    """The framework's own import error reaches the program exactly as without gradfix."""
    code = ("try:\n    import gftoy.accum\nexcept RuntimeError as exc:\n    print('RAISED', repr(str(exc)))\n"
            + STATUS)
    broken = tmp_path / "broken"
    site = toy.install(broken, "1.0", "buggy")
    (site / "gftoy" / "accum.py").write_text("raise RuntimeError('gftoy cannot start (fault injection)')\n")
    runs = {value: run_python(code, toy_release=None, env={"GRADFIX": value}, extra_paths=(site,))
            for value in ("0", "1")}
    assert runs["0"].value("RAISED") == runs["1"].value("RAISED") == "gftoy cannot start (fault injection)"
    assert runs["1"].returncode == runs["0"].returncode == 0
    assert runs["1"].value("STATUS")[PATCH_ID][0] == "armed"  # never applied to a module that did not load


def test_fork_after_activation_inherits_the_patch(run_python, reference):
    code = ("import gradfix, gftoy.accum, os, sys\npid = os.fork()\nif pid == 0:\n"
            "    exec(compile(WORKLOAD, 'workload', 'exec'))\n    sys.stdout.flush()\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\n")
    run = run_python(f"WORKLOAD = {WORKLOAD!r}\n" + code)
    assert run.returncode == 0
    assert run.value("RESULT") == reference  # computed in the child


# (variable, bad value, what the one warning must quote)
BAD_VALUES = [
    ("GRADFIX_LOG", "loud", "'loud'"), ("GRADFIX_LOG", "DEBUG!", "'DEBUG!'"),
    ("GRADFIX_STRICT", "sometimes", "'sometimes'"), ("GRADFIX_STRICT", "2", "'2'"),
    ("GRADFIX_DISABLE", "no-such-patch", "'no-such-patch'"), ("GRADFIX_DISABLE", f"{PATCH_ID},typo-id", "'typo-id'"),
    ("GRADFIX_PROFILE", "latest", "'latest'"), ("GRADFIX_PROFILE", "999.0", "'999.0'"),
    ("GRADFIX_CATALOG_PATH", "/nonexistent/gradfix-catalog", "/nonexistent/gradfix-catalog"),
]


@pytest.mark.parametrize("variable,value,quoted", BAD_VALUES)
def test_every_bad_value_warns_once_and_the_program_runs(run_python, variable, value, quoted):
    """One warning naming the variable and the bad value; exit code as without gradfix."""
    plain = run_python(WORKLOAD, env={"GRADFIX": "0"})
    run = run_python("import gradfix\n" + WORKLOAD, env={variable: value})
    assert run.returncode == plain.returncode == 0
    named = [line for line in gradfix_lines(run.stderr) if variable in line]
    assert len(named) == 1, run.stderr
    assert quoted in named[0]


@pytest.mark.parametrize("value", ["maybe", "2", "enable"])
def test_bad_switch_values_leave_the_program_alone(run_python, unpatched, value):
    run = run_python(WORKLOAD, env={"GRADFIX": value})
    assert run.returncode == 0 and run.value("RESULT") == unpatched
    assert len([line for line in gradfix_lines(run.stderr) if "GRADFIX=" in line]) == 1


# A read-only installation, as on an image or a shared cluster filesystem. Root ignores file
# modes (CI and many containers run as root), so the refusal comes from an audit hook: every
# attempt to create, write, rename or remove a file under the interpreter's prefixes or a
# folder of sys.path fails with EROFS, as it would there. Python's own bytecode cache writes
# are refused too, which importlib tolerates.
READ_ONLY = """
import errno, os, sys
ROOTS = tuple(path for path in {sys.prefix, sys.base_prefix, *sys.path} if path)
REFUSED = []
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
WRITE_EVENTS = ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.chmod")
def read_only(event, args):
    if event != "open" and event not in WRITE_EVENTS:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not os.path.abspath(path).startswith(ROOTS):
        return
    if event == "open":
        mode, flags = args[1], args[2]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITING)
    else:
        writes = True
    if writes:
        REFUSED.append(path)
        raise OSError(errno.EROFS, "Read-only file system", path)
sys.addaudithook(read_only)
"""


def test_read_only_installation(run_python, reference):
    run = run_python(READ_ONLY + "import gradfix\n" + WORKLOAD + STATUS
                     + "print('REFUSED', [len(REFUSED), [p for p in REFUSED if 'gradfix' in p and '__pycache__' not in p]])\n",
                     env={"PYTHONDONTWRITEBYTECODE": None})
    assert run.returncode == 0, run.stderr
    assert run.value("RESULT") == reference
    assert run.value("STATUS")[PATCH_ID][0] == "applied"
    refused, by_gradfix = run.value("REFUSED")
    assert refused > 0, "the read-only rule never triggered: it tests nothing"  # bytecode cache writes
    assert by_gradfix == []  # gradfix itself never tried to write (bytecode caches are importlib's)
    assert not [line for line in gradfix_lines(run.stderr) if "warning" in line.lower() or "error" in line.lower()]
