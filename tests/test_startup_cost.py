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
