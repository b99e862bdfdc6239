"""With the paper's frameworks installed (an OpenRLHF release, its DeepSpeed release and
the venv's transformers): `--json` output is one JSON document on standard output,
whatever the frameworks print while gradfix imports them to assess them; and a process
that imports DeepSpeed with GRADFIX=1 loads the DeepSpeed fix modules only."""

import json
import subprocess
import sys

import pytest

from orlrun import release_env, releases, stacks

RELEASE = releases()[-1:]  # the newest in the matrix


def environment(release, **extra):
    env = release_env(release, stacks()[release], **extra)
    del env["DS_ACCELERATOR"]  # let DeepSpeed detect the CPU itself, and say so on import
    return env


@pytest.mark.parametrize("release", RELEASE)
@pytest.mark.parametrize("command", ["list", "status"])
def test_json_output_is_one_document(release, command):
    proc = subprocess.run([sys.executable, "-m", "gradfix", command, "--json"], capture_output=True, text=True,
                          env=environment(release, GRADFIX="1"), timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    rows = {row["id"]: row for row in json.loads(proc.stdout)}
    assert {rows[pid]["installed_version"] is not None
            for pid in ("ds-zero2-offload-ga", "openrlhf-sft-microbatch-mean", "hf-dp-token-average")} == {True}
    if command == "list":  # the assessment imported DeepSpeed, which announced its accelerator
        assert "Setting accelerator to CPU" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("release", RELEASE)
def test_importing_deepspeed_loads_the_deepspeed_fixes_only(release):
    code = ("import sys, json\nimport deepspeed\n"
            "print('FIXES', json.dumps(sorted(m for m in sys.modules if m.startswith('gradfix.fixes.'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment(release, GRADFIX="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("FIXES ")]
    packages = {name.split(".")[2] for name in json.loads(line[len("FIXES "):]) if not name.startswith("gradfix.fixes._")}
    assert packages == {"deepspeed"}, line
