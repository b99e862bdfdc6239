"""`import gradfix` must stay cheap: nothing heavy is imported unless a catalog
package is installed. (Timings are in benchmarks/; this checks the cause.)"""

import toy

HEAVY = ("wrapt", "packaging", "tomllib", "tomli", "logging", "importlib.metadata", "dataclasses",
         "enum", "re", "inspect", "asyncio", "typing")
CODE = "import sys\nbefore = set(sys.modules)\nimport gradfix\nprint('NEW', sorted(set(sys.modules) - before))\n"


def test_import_gradfix_imports_nothing_heavy(run_python):
    result = run_python(CODE, toy_release=None, catalogs=())
    heavy = [name for name in result.value("NEW") if name in HEAVY]
    assert heavy == [], heavy


def test_packages_are_imported_only_when_a_catalog_package_is_installed(run_python):
    # gftoy 1.0 installed and the fixture catalog read from TOML: packaging is needed now,
    # wrapt still is not (it comes with the first patch actually applied).
    new = run_python(CODE, catalogs=(toy.CATALOG,)).value("NEW")
    assert "packaging" in new and "wrapt" not in new


STATES = "print('STATES', {s.id: [s.state, s.reason] for s in gradfix.status()})\n"


def fix_modules(new_modules):
    return [name for name in new_modules if name.startswith("gradfix.fixes")]


def test_no_fix_module_is_loaded_for_frameworks_that_are_not_installed(run_python):
    """Every built-in patch is evaluated from the catalog index: none of its frameworks is
    installed here, so none of its fix modules is imported, and each says why."""
    result = run_python(CODE + STATES, toy_release=None, catalogs=())
    assert fix_modules(result.value("NEW")) == []
    states = result.value("STATES")
    assert len(states) >= 31 and {state for state, _ in states.values()} == {"not_needed"}
    assert states["ds-zero2-offload-ga"][1] == "deepspeed is not installed"


def test_an_installed_framework_is_armed_without_loading_its_fixes(run_python, tmp_path):
    """DeepSpeed 0.16.4 installed (its metadata) but not imported: its patches are armed on
    their target modules, and no fix module is imported until a target is."""
    metadata = tmp_path / "site" / "deepspeed-0.16.4.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.16.4\n\n")
    result = run_python(CODE + STATES, toy_release=None, catalogs=(), extra_paths=[tmp_path / "site"])
    assert fix_modules(result.value("NEW")) == []
    state, reason = result.value("STATES")["ds-zero2-offload-ga"]
    assert state == "armed" and reason == "waiting for deepspeed.runtime.zero.stage_1_and_2 to be imported"


def test_a_stale_index_target_fails_the_patch_with_what_to_do(run_python):
    """A fix module that patches another module than the index says (an index not
    regenerated after a fix changed) is not applied on the index's word."""
    check = ("from gradfix import applying, catalog\nfrom gradfix.registry import PatchRecord\n"
             "entry = next(e for e in catalog.load().entries if e.id == 'ds-zero2-offload-ga')\n"
             "record = PatchRecord(entry)\nrecord.target = 'deepspeed.somewhere_else'\n"
             "print('LOADED', applying.load_fix(record))\nprint('REASON', repr(record.reason))\n")
    result = run_python(check, toy_release=None, catalogs=())
    assert result.value("LOADED") is False
    reason = result.value("REASON")
    assert "the index is out of date" in reason and "python -m gradfix._generate" in reason


def test_no_import_hook_is_installed_where_nothing_needs_one(run_python):
    """No catalog framework and no Ray installed: no patch is armed, so gradfix installs
    no import hook (and does not load the module that holds it)."""
    code = CODE + "print('FINDERS', [type(f).__module__ for f in sys.meta_path])\n"
    result = run_python(code, toy_release=None, catalogs=())
    assert "gradfix.hooks" not in result.value("NEW")
    assert "gradfix.hooks" not in result.value("FINDERS")


def test_ray_installed_gets_its_hook(run_python, tmp_path):
    """Ray's metadata alone (not imported): the hook that carries GRADFIX to Ray workers
    is installed, so ray.init is wrapped when the program imports Ray."""
    metadata = tmp_path / "site" / "ray-2.40.0.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: ray\nVersion: 2.40.0\n\n")
    code = CODE + "from gradfix import hooks\nprint('WATCHED', 'ray' in hooks._callbacks)\n"
    result = run_python(code, toy_release=None, catalogs=(), extra_paths=[tmp_path / "site"])
    assert "gradfix.hooks" in result.value("NEW") and result.value("WATCHED") is True


def test_a_checkout_without_metadata_is_armed(run_python, tmp_path):
    """A framework importable from a plain folder on sys.path (no dist-info: a source
    checkout) is found by the activation's listing of sys.path, without an import search,
    and its patches are armed with the version unknown."""
    (tmp_path / "src" / "deepspeed").mkdir(parents=True)
    result = run_python(CODE + STATES, toy_release=None, catalogs=(), extra_paths=[tmp_path / "src"])
    assert fix_modules(result.value("NEW")) == []
    assert result.value("STATES")["ds-zero2-offload-ga"][0] == "armed"


def test_a_checkout_inside_a_zip_archive_is_armed(run_python, tmp_path):
    """A zip archive on sys.path cannot be listed: the import system is asked instead."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "frameworks.zip", "w") as archive:
        archive.writestr("deepspeed/__init__.py", "")
    result = run_python(CODE + STATES, toy_release=None, catalogs=(), extra_paths=[tmp_path / "frameworks.zip"])
    assert result.value("STATES")["ds-zero2-offload-ga"][0] == "armed"
