import ast
import json
import os
import subprocess
import sys

import pytest

import toy
from helpers import clean_env, current_tier

# The fixture fix modules (gftoy_fixes) are importable in-process too.
sys.path.insert(0, str(toy.FIXTURES))



class Result:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def value(self, tag: str):
        """The value printed on the line ``<tag> <value>``: JSON or a Python literal."""
        for line in self.stdout.splitlines():
            if line.startswith(tag + " "):
                text = line[len(tag) + 1 :]
                try:
                    return json.loads(text)
                except ValueError:
                    return ast.literal_eval(text)
        raise AssertionError(f"no {tag} line in stdout:\n{self.stdout}\nstderr:\n{self.stderr}")


@pytest.fixture
def run_python(tmp_path):
    """Run a Python snippet in a fresh interpreter with a gftoy release installed.

    ``toy_release=(version, code)`` or None for no gftoy; ``catalogs`` are extra
    catalog folders; ``env`` adds variables. Runs in tmp_path, so the checkout
    is not importable by accident: the gradfix under test is the installed one.
    """

    def run(code, toy_release=("1.0", "buggy"), catalogs=(toy.CATALOG,), env=None, argv=None, extra_paths=()):
        """Run ``python -c code``, or ``python *argv`` when argv is given; ``extra_paths``
        go first on PYTHONPATH."""
        paths = [*map(str, extra_paths), str(toy.FIXTURES)]
        if toy_release is not None:
            paths.insert(len(extra_paths), str(toy.install(tmp_path / "toys", *toy_release)))
        variables = clean_env(
            PYTHONPATH=os.pathsep.join(paths),
            GRADFIX_CATALOG_PATH=os.pathsep.join(map(str, catalogs)) or None,
        )
        variables.update(env or {})
        variables = {k: v for k, v in variables.items() if v is not None}
        proc = subprocess.run(
            [sys.executable, *(argv or ["-c", code])], cwd=tmp_path, env=variables, capture_output=True, text=True, timeout=120
        )
        return Result(proc)

    (tmp_path / "toys").mkdir()
    return run


def pytest_ignore_collect(collection_path, config):
    """tests/deepspeed_releases needs real DeepSpeed releases: only the nox `deepspeed` session
    installs them (and sets GRADFIX_DS_RELEASES)."""
    return "GRADFIX_DS_RELEASES" not in os.environ and collection_path.name == "deepspeed_releases"


def pytest_configure(config):
    config.addinivalue_line("markers", "full_tier_only(reason): only the full tier runs it (helpers.full_tier_only)")


def pytest_collection_modifyitems(config, items):
    """CI skips the tests marked full_tier_only. The full tier's periodic run
    (noxfile.run_release_tests) leaves out the tests CI runs: their ids are in the file
    named by GRADFIX_CI_TESTS."""
    if current_tier() != "full":
        for item in items:
            marker = item.get_closest_marker("full_tier_only")
            if marker:
                item.add_marker(pytest.mark.skip(reason=f"full tier only: {marker.kwargs['reason']}"))
    listed = os.environ.get("GRADFIX_CI_TESTS")
    if not listed:
        return
    with open(listed) as handle:
        in_ci = {line.strip() for line in handle if line.strip()}
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid in in_ci])
    items[:] = [item for item in items if item.nodeid not in in_ci]
