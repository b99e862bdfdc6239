"""gradfix's two sys.meta_path finders side by side.

Under GRADFIX=1 the start-up finder activates gradfix at the first watched import and
then asks the other finders for the spec; gradfix's post-import hook finder, which
activation has just installed, asks the other finders too. When gradfix hooks the
watched top-level package itself (it does for ``ray``), each used to ask the other
until Python's recursion limit ended the import.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from gradfix import hooks

PACKAGE = "gf_watched_probe"


def load_bootstrap():
    path = Path(hooks.__file__).parent / "_site" / "_gradfix_bootstrap.py"
    if not path.exists():  # installed wheel: the module sits at the site-packages root
        path = Path(importlib.util.find_spec("_gradfix_bootstrap").origin)
    spec = importlib.util.spec_from_file_location("bootstrap_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def probe_package(tmp_path, monkeypatch):
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "__init__.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield
    sys.modules.pop(PACKAGE, None)
    hooks._callbacks.pop(PACKAGE, None)


def test_start_up_finder_and_hook_finder_import_a_hooked_watched_package(probe_package):
    bootstrap = load_bootstrap()
    bootstrap.WATCHED = frozenset({PACKAGE})
    seen = []
    # What activation does for ray: hook the top-level package that woke it.
    bootstrap._activate = lambda: hooks.when_imported(PACKAGE, seen.append)
    start_up = bootstrap._FirstFrameworkImport()
    sys.meta_path.insert(0, start_up)

    module = importlib.import_module(PACKAGE)

    assert module.VALUE == 42
    assert seen == [module]  # the hook ran once, after the package's code
    assert start_up.done and start_up not in sys.meta_path  # stepped aside
    assert not start_up.searching and not hooks._FINDER._searching
    assert module.__spec__.loader is not None and not isinstance(module.__spec__.loader, hooks._HookLoader)


def test_start_up_finder_stays_inert_for_a_missing_package(probe_package):
    bootstrap = load_bootstrap()
    bootstrap.WATCHED = frozenset({"gf_not_installed_anywhere"})
    activations = []
    bootstrap._activate = lambda: activations.append(1)
    start_up = bootstrap._FirstFrameworkImport()
    sys.meta_path.insert(0, start_up)

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("gf_not_installed_anywhere")
    importlib.import_module(PACKAGE)  # an unwatched import is not disturbed

    assert activations == [1]  # gradfix activated once, at the first watched lookup
    assert start_up in sys.meta_path and not start_up.searching
