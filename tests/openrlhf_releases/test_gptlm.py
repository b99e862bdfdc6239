"""openrlhf-sft-gptlm-mean: OpenRLHF before 0.7.0 has the bug (GPTLMLoss averages each
micro-batch over its own labels) and gradfix reports it unsupported, with what to do,
without touching the trainer."""

import subprocess
import sys

import pytest

from orlrun import release_env, releases, stacks, version

OLD = [r for r in releases(oldest="0.0.0") if version(r) < (0, 7, 0)]
CODE = """
import gradfix
import openrlhf.trainer.sft_trainer as module
status = {s.id: s for s in gradfix.status()}['openrlhf-sft-gptlm-mean']
print('STATE', status.state)
print('REASON', status.reason)
print('UNTOUCHED', not hasattr(vars(module.SFTTrainer)['fit'], 'gradfix_patch_id'))
"""


@pytest.mark.parametrize("release", OLD)
def test_gptlm_release_is_reported_unsupported_with_advice(release):
    proc = subprocess.run([sys.executable, "-c", CODE], env=release_env(release, stacks()[release], GRADFIX="1"),
                          capture_output=True, text=True, timeout=300)
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:1].isupper() and " " in line)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lines["STATE"] == "unsupported"
    assert "has this bug and gradfix cannot correct it" in lines["REASON"]
    assert "gradient accumulation 1 on a single data-parallel rank" in lines["REASON"]
    assert lines["UNTOUCHED"] == "True"
