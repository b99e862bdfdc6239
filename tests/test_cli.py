import json
import sys

import pytest

from gradfix import __version__ as VERSION

import toy
from toy import PATCH_ID


def gradfix(run_python, *args, **kwargs):
    return run_python(None, argv=["-m", "gradfix", *args], **kwargs)


def test_list_json_gives_the_verdict_for_each_release(run_python):
    cases = {
        ("1.0", "buggy"): "applies",
        ("2.0", "fixed"): "not needed",
        ("1.5+fork", "fixed"): "not needed",
        ("1.6", "changed"): "unsupported",
        None: "package absent",
    }
    for release, verdict in cases.items():
        result = gradfix(run_python, "list", "--json", toy_release=release)
        (row,) = [row for row in json.loads(result.stdout) if row["id"] == PATCH_ID]
        assert row["id"] == PATCH_ID and row["verdict"] == verdict, (release, row)
        assert row["affected"] == ">=1.0,<2.0" and row["fixed_in"] == "2.0"
        assert result.returncode == (1 if verdict == "unsupported" else 0)


def test_list_table_and_exit_code_for_catalog_errors(run_python, tmp_path):
    result = gradfix(run_python, "list")
    assert result.returncode == 0
    header, *rows = result.stdout.splitlines()
    (row,) = [line for line in rows if line.startswith(PATCH_ID)]
    assert header.split() == ["ID", "PACKAGE", "AFFECTED", "FIXED", "IN", "INSTALLED", "VERDICT"]
    assert row.split() == [PATCH_ID, "gftoy", ">=1.0,<2.0", "2.0", "1.0", "applies"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.toml").write_text("not toml at all = = =")
    result = gradfix(run_python, "list", catalogs=(toy.CATALOG, bad))
    assert result.returncode == 2 and "x.toml: cannot read" in result.stderr


def test_list_inside_an_activated_program_reports_the_applied_patch(run_python, tmp_path):
    code = (
        "from gradfix.cli import main\nimport gftoy.accum\nmain(['list', '--json'])\n"
        "import gradfix\nprint('STATES', [(s.id, s.state) for s in gradfix.status()])\n"
    )
    result = run_python(code)
    rows = json.loads(result.stdout[: result.stdout.index("STATES")])
    (row,) = [row for row in rows if row["id"] == PATCH_ID]
    assert row["verdict"] == "applies"  # not misread as "fixed" through gradfix's own wrapper
    assert dict(result.value("STATES"))[PATCH_ID] == "applied"


def test_status_json_after_activation(run_python):
    result = gradfix(run_python, "status", "--json")
    assert result.returncode == 0
    records = {record["id"]: record for record in json.loads(result.stdout)}
    assert records[PATCH_ID]["state"] == "armed"  # gftoy not imported by the CLI
    assert records["ds-zero2-offload-ga"]["state"] == "not_needed"  # no DeepSpeed here


@pytest.mark.skipif(sys.version_info < (3, 10), reason="Python 3.9 has no sys.orig_argv to recognise `-m gradfix`")
def test_cli_process_does_not_activate_on_import(run_python):
    result = gradfix(run_python, "list")
    assert f"gradfix {VERSION}:" not in result.stderr  # no summary line from the CLI's own import


def test_doctor_reports_versions_activation_and_advice(run_python):
    result = gradfix(run_python, "doctor")
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "wrapt" in out and "packaging" in out and "deepspeed" in out
    assert "GRADFIX         unset" in out
    assert f"{PATCH_ID}: applies" in out
    assert "add `import gradfix` at the top of your training script" in out


def test_doctor_flags_problems(run_python):
    result = gradfix(run_python, "doctor", toy_release=("1.6", "changed"), env={"GRADFIX_DISABLE": "nope", "GRADFIX_LOG": "loud"})
    assert result.returncode == 1
    assert "Problems:" in result.stdout
    assert "not the known buggy code" in result.stdout
    assert "'nope'" in result.stdout and "GRADFIX_LOG='loud'" in result.stdout


def test_doctor_flags_a_stale_unchecked_index(run_python, tmp_path):
    import shutil

    folder = tmp_path / "deployed"
    shutil.copytree(toy.CATALOG, folder)
    assert gradfix(run_python, "index", "--unchecked", str(folder)).returncode == 0
    first = sorted(folder.glob("*.toml"))[0]
    first.write_text(first.read_text() + "\n")  # edited after indexing
    result = gradfix(run_python, "doctor", catalogs=(folder,))
    assert result.returncode == 1
    assert f"{folder}: index unchecked, stale: {first.name} edited" in result.stdout
    assert f"`gradfix index --unchecked {folder}` again" in result.stdout


def test_run_sets_the_environment_and_execs(run_python, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(toy.WORKLOAD + "import os, sys\nprint('ENV', [os.environ.get(k) for k in ('GRADFIX', 'GRADFIX_STRICT', 'GRADFIX_DISABLE')])\nprint('ACTIVE', 'gradfix' in sys.modules)\n")
    result = gradfix(run_python, "run", "--strict", "--disable", "other-id", "--", sys.executable, str(script))
    assert result.value("ENV") == ["1", "1", "other-id"]
    assert result.value("ACTIVE") is True
    reference = run_python(toy.WORKLOAD, toy_release=("2.0", "fixed"), catalogs=()).value("RESULT")
    assert result.value("RESULT") == reference


def test_run_passes_the_exit_code_and_reports_missing_commands(run_python):
    assert gradfix(run_python, "run", "--", sys.executable, "-c", "raise SystemExit(7)").returncode == 7
    missing = gradfix(run_python, "run", "--", "no-such-command-xyz")
    assert missing.returncode == 127 and "cannot run 'no-such-command-xyz'" in missing.stderr
    assert gradfix(run_python, "run").returncode == 2


def test_usage_errors_exit_2(run_python):
    assert gradfix(run_python).returncode == 2
    assert gradfix(run_python, "frobnicate").returncode == 2


def test_index_command(run_python, tmp_path):
    folder = tmp_path / "extra"
    folder.mkdir()
    for path in toy.CATALOG.glob("*.toml"):
        (folder / path.name).write_text(path.read_text())
    result = gradfix(run_python, "index", str(folder))
    assert result.returncode == 0, result.stderr
    assert "gradfix-index.marshal" in result.stdout and (folder / "gradfix-index.marshal").exists()
    missing = gradfix(run_python, "index", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
