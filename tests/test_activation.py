"""The import/activation order matrix, each case in a fresh interpreter, against
the toy package gftoy (1.x buggy, 2.0 fixed) and the fixture patch."""

import pytest

from gradfix import __version__ as VERSION

import toy
from toy import PATCH_ID, WORKLOAD

STATUS = """
import json, sys
_gradfix = sys.modules.get("gradfix")
print("STATUS", json.dumps({s.id: s.to_dict() for s in _gradfix.status()} if _gradfix else None))
"""
MODULES = """
import json, sys
print("MODULES", json.dumps(sorted(m for m in ("gftoy", "gftoy.accum", "torch", "deepspeed", "gradfix", "wrapt") if m in sys.modules)))
"""
FIXED_RELEASE = ("2.0", "fixed")


@pytest.fixture
def reference(run_python):
    """What the first fixed release computes for the workload."""
    return run_python(WORKLOAD, toy_release=FIXED_RELEASE, catalogs=()).value("RESULT")


def state(result, patch_id=PATCH_ID):
    return result.value("STATUS")[patch_id]


def test_unpatched_buggy_release_is_wrong(run_python, reference):
    # Proves the workload sees the bug: without gradfix, 1.0 differs from 2.0.
    result = run_python(WORKLOAD).value("RESULT")
    assert result != reference


def test_import_before_target(run_python, reference):
    result = run_python("import gradfix\n" + MODULES + WORKLOAD + STATUS)
    assert result.value("MODULES") == ["gradfix"]  # lazy: gftoy (and wrapt) untouched until the program imports gftoy
    assert result.value("RESULT") == reference
    record = state(result)
    assert record["state"] == "applied" and record["installed_version"] == "1.0"
    assert record["hits"] == 4  # two windows of four: micro-batches 2 and 3 of each restored
    assert record["evidence"] == "corrected 4 micro-batches"
    assert record["locations"] == ["gftoy.accum.Accumulator.add"]
    assert f"gradfix {VERSION}: applied: {PATCH_ID} (gftoy 1.0)" in result.stderr
    assert f"gradfix: {PATCH_ID} applied, corrected 4 micro-batches" in result.stderr  # the exit report


def test_applied_but_never_reached_is_reported(run_python):
    result = run_python("import gradfix, gftoy.accum\n" + STATUS)
    record = state(result)
    assert record["state"] == "applied" and record["hits"] == 0
    assert record["evidence"] == "never reached in this process (no accumulation window of 3 or more ran)"
    assert f"gradfix: {PATCH_ID} applied, never reached in this process" in result.stderr


def test_import_after_target_patches_at_once(run_python, reference):
    code = "import gftoy.accum\nimport gradfix\n" + STATUS + WORKLOAD
    result = run_python(code)
    assert state(result)["state"] == "applied"
    assert result.value("RESULT") == reference


def test_environment_only_activation(run_python, reference):
    result = run_python(WORKLOAD + STATUS, env={"GRADFIX": "1"})
    assert result.value("RESULT") == reference
    assert state(result)["state"] == "applied"


def test_environment_unset_imports_nothing(run_python):
    result = run_python(MODULES)
    assert result.value("MODULES") == []
    assert result.stderr == ""


def test_activating_twice_wraps_once(run_python, reference):
    code = (
        "import gradfix, importlib\nimport gradfix\ngradfix.activate()\n"
        + WORKLOAD
        + "gradfix.activate()\n"
        + "from gftoy.accum import Accumulator\nfrom gradfix.patcher import GradfixWrapper\n"
        + "print('NESTED', isinstance(vars(Accumulator)['add'].__wrapped__, GradfixWrapper))\n"
        + STATUS
    )
    result = run_python(code, env={"GRADFIX": "1"})  # bootstrap + explicit imports + activate()
    assert result.value("RESULT") == reference
    assert result.value("NESTED") is False
    assert state(result)["state"] == "applied"
    assert result.stderr.count(f"gradfix {VERSION}:") == 1  # one summary line per process


@pytest.mark.parametrize(
    "env,reason",
    [
        ({"GRADFIX": "0"}, "GRADFIX=0"),
        ({"GRADFIX_DISABLE": PATCH_ID}, "disabled by GRADFIX_DISABLE"),
        ({"GRADFIX_DISABLE": "*"}, "disabled by GRADFIX_DISABLE"),
    ],
)
def test_disabled(run_python, reference, env, reason):
    result = run_python("import gradfix\ngradfix.activate()\n" + WORKLOAD + STATUS, env=env)
    assert state(result)["state"] == "disabled"
    assert state(result)["reason"] == reason
    assert result.value("RESULT") != reference  # the bug is left in place


def test_fixed_release_is_untouched(run_python, reference):
    code = (
        "import gftoy.accum\noriginal = vars(gftoy.accum.Accumulator)['add']\nimport gradfix\n"
        "print('SAME', vars(gftoy.accum.Accumulator)['add'] is original)\n" + WORKLOAD + STATUS
    )
    result = run_python(code, toy_release=FIXED_RELEASE)
    assert result.value("SAME") is True
    assert result.value("RESULT") == reference
    record = state(result)
    assert record["state"] == "not_needed"
    assert "gftoy 2.0 is outside the affected range >=1.0,<2.0" in record["reason"]


def test_release_before_the_bug_is_untouched(run_python):
    result = run_python("import gradfix\n" + STATUS, toy_release=("0.9", "fixed"))
    assert state(result)["state"] == "not_needed"


def test_absent_package(run_python):
    result = run_python("import gradfix\n" + STATUS, toy_release=None)
    record = state(result)
    assert record["state"] == "not_needed" and record["reason"] == "gftoy is not installed"
    assert record["package_present"] is False


def test_local_build_with_the_fix_backported_is_left_alone(run_python, reference):
    result = run_python("import gradfix\n" + WORKLOAD + STATUS, toy_release=("1.5+fork", "fixed"))
    record = state(result)
    assert record["state"] == "not_needed"
    assert "already has the fix" in record["reason"]
    assert result.value("RESULT") == reference


def test_local_build_with_the_bug_is_patched(run_python, reference):
    result = run_python("import gradfix\n" + WORKLOAD + STATUS, toy_release=("1.5+fork", "buggy"))
    assert state(result)["state"] == "applied"
    assert result.value("RESULT") == reference


CHANGED = ("1.6", "changed")


def test_unknown_code_in_range_is_unsupported_and_untouched(run_python):
    code = (
        "import gftoy.accum\noriginal = vars(gftoy.accum.Accumulator)['add']\nimport gradfix\n"
        "print('SAME', vars(gftoy.accum.Accumulator)['add'] is original)\n" + STATUS
    )
    result = run_python(code, toy_release=CHANGED)
    assert result.returncode == 0
    assert result.value("SAME") is True
    record = state(result)
    assert record["state"] == "unsupported"
    assert "not the known buggy code" in record["reason"] and "AttributeError" in record["reason"]
    assert f"unsupported: {PATCH_ID} (gftoy 1.6 is not the known buggy code" in result.stderr


def test_strict_mode_raises_on_unsupported_at_target_import(run_python):
    code = "import gradfix\ntry:\n    import gftoy.accum\nexcept gradfix.GradfixStrictError as exc:\n    print('RAISED', repr(str(exc)))\n"
    result = run_python(code, toy_release=CHANGED, env={"GRADFIX_STRICT": "1"})
    message = result.value("RAISED")
    assert "GRADFIX_STRICT=1" in message and f"{PATCH_ID} is unsupported" in message


def test_strict_mode_raises_when_target_already_imported(run_python):
    result = run_python("import gftoy.accum\nimport gradfix\n", toy_release=CHANGED, env={"GRADFIX_STRICT": "1"})
    assert result.returncode == 1
    assert "GradfixStrictError" in result.stderr and f"{PATCH_ID} is unsupported" in result.stderr


def test_failed_apply_is_reported_and_cleaned_up(run_python):
    code = (
        "import gftoy.accum\noriginal = vars(gftoy.accum.Accumulator)['result']\nimport gradfix\n"
        "print('SAME', vars(gftoy.accum.Accumulator)['result'] is original)\n" + STATUS
    )
    result = run_python(code, catalogs=(toy.BROKEN_CATALOG,))
    assert result.returncode == 0
    assert result.value("SAME") is True  # the half-applied wrap was undone
    record = state(result, "toy-broken-apply")
    assert record["state"] == "failed"
    assert "RuntimeError: the fixture fails on purpose" in record["reason"]


def test_strict_mode_raises_on_failed(run_python):
    code = "import gradfix\nimport gftoy.accum\n"
    result = run_python(code, catalogs=(toy.BROKEN_CATALOG,), env={"GRADFIX_STRICT": "1"})
    assert result.returncode == 1
    assert "toy-broken-apply is failed" in result.stderr


def test_uncorrectable_bug_is_reported_unsupported_and_never_applied(run_python):
    code = (
        "import gftoy.accum\noriginal = vars(gftoy.accum.Accumulator)['result']\nimport gradfix\n"
        "print('SAME', vars(gftoy.accum.Accumulator)['result'] is original)\n" + STATUS
    )
    result = run_python(code, catalogs=(toy.UNCORRECTABLE_CATALOG,))
    assert result.returncode == 0 and result.value("SAME") is True
    record = state(result, "toy-uncorrectable")
    assert record["state"] == "unsupported"
    assert "has this bug and gradfix cannot correct it here" in record["reason"]
    assert "use gradient accumulation 1" in record["reason"] and "gftoy >=2.0" in record["reason"]


def test_strict_mode_raises_on_uncorrectable(run_python):
    result = run_python("import gradfix\nimport gftoy.accum\n", catalogs=(toy.UNCORRECTABLE_CATALOG,),
                        env={"GRADFIX_STRICT": "1"})
    assert result.returncode == 1 and "toy-uncorrectable is unsupported" in result.stderr


def test_revert_restores_the_original_and_reactivation_reapplies(run_python, reference):
    code = (
        "import gftoy.accum\noriginal = vars(gftoy.accum.Accumulator)['add']\nimport gradfix\n"
        f"print('REVERTED', gradfix.revert('{PATCH_ID}'))\n"
        "print('SAME', vars(gftoy.accum.Accumulator)['add'] is original)\n"
        + STATUS.replace('"STATUS"', '"AFTER_REVERT"')
        + WORKLOAD.replace('"RESULT"', '"BUGGY"')
        + "gradfix.activate()\n"
        + WORKLOAD
        + STATUS
    )
    result = run_python(code)
    assert result.value("REVERTED") is True and result.value("SAME") is True
    assert result.value("AFTER_REVERT")[PATCH_ID]["state"] == "reverted"
    assert result.value("BUGGY") != reference
    assert result.value("RESULT") == reference
    assert state(result)["state"] == "applied"


def test_revert_refuses_when_wrapped_on_top(run_python, reference):
    code = (
        "import gradfix, wrapt\nimport gftoy.accum\n"
        "wrapt.wrap_function_wrapper(gftoy.accum.Accumulator, 'add', lambda w, i, a, k: w(*a, **k))\n"
        f"print('REVERTED', gradfix.revert('{PATCH_ID}'))\n" + WORKLOAD + STATUS
    )
    result = run_python(code)
    assert result.value("REVERTED") is False
    assert "changed after gradfix patched it" in result.stderr
    assert state(result)["state"] == "applied"
    assert result.value("RESULT") == reference  # our fix stays under their wrapper


def test_revert_unknown_id_names_the_known_ones(run_python):
    code = "import gradfix\ntry:\n    gradfix.revert('nope')\nexcept KeyError as exc:\n    print('ERROR', repr(str(exc)))\n"
    message = run_python(code).value("ERROR")
    assert "unknown patch id" in message and "nope" in message and PATCH_ID in message


def test_deactivate_reverts_and_disarms(run_python, reference):
    code = "import gradfix\ngradfix.deactivate()\n" + WORKLOAD + STATUS
    result = run_python(code)
    assert state(result)["state"] == "disabled"  # armed, then disarmed before gftoy was imported
    assert result.value("RESULT") != reference


def test_concurrent_activation_and_import_wrap_once(run_python, reference):
    code = (
        "import threading, importlib, gradfix\n"
        "def work():\n    gradfix.activate(); importlib.import_module('gftoy.accum'); gradfix.activate()\n"
        "threads = [threading.Thread(target=work) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "from gftoy.accum import Accumulator\nfrom gradfix.patcher import GradfixWrapper\n"
        "print('NESTED', isinstance(vars(Accumulator)['add'].__wrapped__, GradfixWrapper))\n"
        + WORKLOAD + STATUS
    )
    result = run_python(code)
    assert result.value("NESTED") is False
    assert result.value("RESULT") == reference


@pytest.mark.parametrize("env,line", [
    ({"RANK": "1"}, None),
    ({"RANK": "0"}, f"gradfix {VERSION} [rank 0]: applied"),
    ({"RANK": "3", "GRADFIX_LOG": "debug"}, f"gradfix {VERSION} [rank 3]: applied"),
    ({"SLURM_PROCID": "0"}, f"gradfix {VERSION} [rank 0]: applied"),
    ({}, f"gradfix {VERSION}: applied"),  # no launcher: no rank in the line
    ({"GRADFIX_LOG": "quiet"}, None),
])
def test_summary_only_on_rank_zero_unless_debug(run_python, env, line):
    result = run_python("import gradfix\nimport gftoy.accum\n", env=env)
    if line is None:
        assert f"gradfix {VERSION}" not in result.stderr
    else:
        assert line in result.stderr


def test_summary_goes_to_the_applications_logging_once_configured(run_python):
    code = "import logging, sys\nlogging.basicConfig(stream=sys.stdout, format='APP %(name)s %(message)s')\nimport gradfix\nimport gftoy.accum\n"
    result = run_python(code)
    assert f"APP gradfix gradfix {VERSION}: applied: {PATCH_ID}" in result.stdout
    assert f"gradfix {VERSION}" not in result.stderr  # not printed twice


def test_armed_but_never_imported_is_reported_at_exit(run_python):
    result = run_python("import gradfix\n")
    assert f"armed, target never imported: {PATCH_ID} (gftoy 1.0)" in result.stderr


@pytest.mark.parametrize(
    "env,words",
    [
        ({"GRADFIX": "maybe"}, ["GRADFIX='maybe'", "on", "off"]),
        ({"GRADFIX_LOG": "loud"}, ["GRADFIX_LOG='loud'", "quiet, info, debug"]),
        ({"GRADFIX_STRICT": "sometimes"}, ["GRADFIX_STRICT='sometimes'"]),
        ({"GRADFIX_DISABLE": "no-such-patch"}, ["'no-such-patch'", "valid ids: ", PATCH_ID, "ds-zero2-offload-ga"]),
    ],
)
def test_bad_environment_values_warn_and_keep_working(run_python, reference, env, words):
    result = run_python("import gradfix\n" + WORKLOAD, env=env)
    assert result.returncode == 0
    for word in words:
        assert word in result.stderr
    assert result.value("RESULT") == reference  # a bad value never turns the fix off by accident


def test_bad_switch_value_with_bootstrap_only_stays_inactive(run_python):
    result = run_python(MODULES, env={"GRADFIX": "maybe"})
    assert result.value("MODULES") == []
    assert "GRADFIX='maybe' is not a valid value" in result.stderr


def test_bad_catalog_file_is_skipped_with_a_named_warning(run_python, tmp_path, reference):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "oops.toml").write_text('id = "oops"\n')
    result = run_python("import gradfix\n" + WORKLOAD, catalogs=(toy.CATALOG, bad))
    assert result.returncode == 0
    assert "oops.toml: field 'package': missing" in result.stderr
    assert result.value("RESULT") == reference
    strict = run_python("import gradfix\n", catalogs=(toy.CATALOG, bad), env={"GRADFIX_STRICT": "1"})
    assert strict.returncode == 1 and "catalog has errors" in strict.stderr
