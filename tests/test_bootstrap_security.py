"""The start-up path (gradfix.pth -> _gradfix_bootstrap -> import gradfix -> activation)
run under an audit hook in a fresh interpreter: it only parses environment values
(never compiles or evaluates them), writes no file, starts no process, opens no
socket, and opens only files of the Python installation it runs in (modules, the
catalog, distribution metadata).

The interpreter starts with -S, installs the hook, then runs site.main(), which
processes the site-packages .pth files exactly as a normal start-up does, and looks
for DeepSpeed, which is when GRADFIX=1 activates gradfix.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers import clean_env

AUDITED = r"""
import json, os, sys

EVENTS = []
WATCHED = ("open", "compile", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork",
           "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.__new__", "urllib.Request",
           "os.remove", "os.rename", "os.mkdir", "shutil.rmtree", "os.chmod")

def shown(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, (str, int)) or value is None else repr(type(value))

def hook(event, args):
    if event in WATCHED:
        EVENTS.append([event, [shown(a) for a in args]])

sys.addaudithook(hook)
import site
site.main()
import importlib.util
importlib.util.find_spec("deepspeed")  # under GRADFIX=1, the first lookup of a patched framework activates
active = "gradfix" in sys.modules and sys.modules["gradfix"].is_active()
EVENTS_DONE = list(EVENTS)
print("AUDIT", json.dumps({"active": active, "events": EVENTS_DONE, "prefixes": [sys.prefix, sys.base_prefix]}))
"""

# Values a careless bootstrap might evaluate; none of them may run.
PAYLOAD = "__import__('os').system('echo pwned')"


def audit(tmp_path, **environment):
    env = clean_env(PYTHONDONTWRITEBYTECODE="1", **environment)
    proc = subprocess.run([sys.executable, "-S", "-c", AUDITED], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("AUDIT "))
    return json.loads(line[len("AUDIT "):]), proc


def installed_package():
    """Where gradfix is installed (site-packages, or the checkout of an editable install)."""
    import importlib.util

    return importlib.util.find_spec("gradfix").submodule_search_locations[0]


def check(result, tmp_path):
    from gradfix import catalog

    prefixes = (*result["prefixes"], installed_package(), catalog.builtin_dir())
    for event, args in result["events"]:
        if event == "open":
            path, mode = args[0], args[1]
            if isinstance(path, int):
                continue  # a file descriptor opened earlier
            assert mode is None or not any(flag in str(mode) for flag in "wax+"), (event, args)
            assert str(path).startswith(prefixes), f"opened outside the installation: {path}"
        elif event == "compile":
            source = args[0]
            # Modules, the "import" lines of .pth files, string annotations ("int"): never a value
            # taken from the environment.
            assert PAYLOAD not in str(source), f"an environment value was compiled: {args}"
        else:
            pytest.fail(f"start-up must not {event}: {args}")
    assert not list(tmp_path.iterdir())  # nothing written where the program runs


@pytest.fixture(autouse=True)
def _installed_bootstrap():
    import importlib.util

    if importlib.util.find_spec("_gradfix_bootstrap") is None:
        pytest.skip("gradfix is not installed with its start-up file in this interpreter")


def test_activation_touches_only_the_installation(tmp_path):
    result, proc = audit(tmp_path, GRADFIX="1")
    assert result["active"], proc.stderr
    check(result, tmp_path)


def test_unset_gradfix_imports_nothing(tmp_path):
    result, _ = audit(tmp_path)
    assert not result["active"]
    check(result, tmp_path)
    opened = [args[0] for event, args in result["events"] if event == "open" and isinstance(args[0], str)]
    package = os.path.join(installed_package(), "")  # not gradfix.pth, which site.py reads
    assert not any(path.startswith(package) for path in opened)  # the package is never read


@pytest.mark.parametrize("variable", ["GRADFIX", "GRADFIX_LOG", "GRADFIX_DISABLE", "GRADFIX_STRICT",
                                      "GRADFIX_PROFILE", "GRADFIX_CATALOG_PATH"])
def test_environment_values_are_never_evaluated(tmp_path, variable):
    environment = {"GRADFIX": "1", variable: PAYLOAD}
    result, proc = audit(tmp_path, **environment)
    check(result, tmp_path)
    assert "pwned" not in proc.stdout and "pwned" not in proc.stderr.replace(PAYLOAD, "")
