"""`gradfix verify`, the README's main demo, end to end against real DeepSpeed
releases: the command a user runs, its output and its exit code."""

import json
import subprocess
import sys

import pytest

from dsrun import FIRST_FIXED, affected_patches, release_env, releases
from helpers import full_tier_only

BUGGY = "0.18.2"
# verify's default call shapes (gradfix.verify.calls.VERIFY_CALLS): 3 through engine.backward,
# 2 direct backwards, which releases before 0.18.3 cannot run. A patch's hits add up over the
# shapes that reach it.
ENGINE_SHAPES, DIRECT_SHAPES = 3, 2
needs = lambda *wanted: pytest.mark.skipif(  # noqa: E731
    not set(wanted) <= set(releases()), reason=f"needs DeepSpeed {', '.join(wanted)} in GRADFIX_DS_RELEASES")


def verify(release, *args, cwd):
    return subprocess.run([sys.executable, "-m", "gradfix", "verify", *args], env=release_env(release),
                          capture_output=True, text=True, timeout=900, cwd=cwd)


def run_line(stdout, label):
    (line,) = [line for line in stdout.splitlines() if line.strip().startswith(label)]
    return line


def assert_bug_and_fix(proc):
    """verify ran, found the release wrong without gradfix and right with it."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_line(proc.stdout, "without gradfix").endswith("WRONG")
    assert run_line(proc.stdout, "with gradfix").endswith("matches")


@needs(BUGGY)
def test_default_configuration_shows_the_bug_and_the_fix(tmp_path):
    proc = verify(BUGGY, cwd=tmp_path)
    assert_bug_and_fix(proc)
    assert f"DeepSpeed {BUGGY}, ZeRO-2, offload_optimizer=cpu, GA 4" in proc.stdout
    assert f"ds-zero2-offload-ga: applied, corrected {6 * ENGINE_SHAPES} accumulation micro-steps" in proc.stdout
    assert "computes wrong gradients for this configuration; with gradfix they match" in proc.stdout
    assert "this DeepSpeed release has no direct loss.backward()" in proc.stdout


@needs("0.19.2")
def test_default_configuration_shows_the_output_hook_bug(tmp_path):
    """0.19.2 (offload fixed, output hooks not): a model returning {loss, logits} is wrong
    through engine.backward and through a direct backward; the plain loop is right."""
    proc = verify("0.19.2", cwd=tmp_path)
    assert_bug_and_fix(proc)
    assert "model returns {loss, logits}, engine.backward(loss):" in proc.stdout  # the table shows it
    wrong = run_line(proc.stdout, "wrong without gradfix:")
    assert "model returns {loss, logits}, engine.backward(loss)" in wrong and "loss.backward()" in wrong
    assert "model returns its prediction" not in wrong
    assert "ds-output-hooks-engine-backward: applied, corrected" in proc.stdout
    assert "ds-output-hooks-direct-backward: applied, corrected" in proc.stdout


@needs("0.19.8")
def test_newest_release_direct_backward(tmp_path):
    """The newest release: engine.backward right, direct backwards wrong and corrected."""
    proc = verify("0.19.8", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcome = json.loads(proc.stdout)
    assert not outcome["runs"]["without gradfix"]["correct"] and outcome["runs"]["with gradfix"]["correct"]
    assert set(outcome["runs"]["without gradfix"]["wrong_calls"]) == {"model-output:direct", "shared:direct"}
    assert outcome["runs"]["with gradfix"]["gradfix"]["ds-output-hooks-direct-backward"]["hits"] == \
        DIRECT_SHAPES * 3 * 4  # 3 steps x GA 4


@needs(FIRST_FIXED)
def test_fixed_release_is_reported_correct(tmp_path):
    """0.19.0 fixed the offload bug; the plain loop (the model returns its prediction,
    engine.backward) is right there. Its output hooks are not: other shapes, above."""
    proc = verify(FIRST_FIXED, "--json", "--calls", "tensor:engine", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["runs"]["without gradfix"]["correct"] and outcome["runs"]["with gradfix"]["correct"]
    assert "gradfix changes nothing here" in outcome["verdict"]
    records = outcome["runs"]["with gradfix"]["gradfix"]
    # 0.19.0 fixed the offload and bf16 bugs; only patches of other bugs (the pipeline's, up
    # to 0.19.2, the output hooks') apply there, and this call shape never reaches them.
    applied = {patch for patch, record in records.items() if record["state"] == "applied"}
    assert applied == affected_patches(FIRST_FIXED) and "ds-zero2-offload-ga" not in applied
    # ds-output-hooks-engine-backward takes over the 1/GA of every engine.backward() (and counts
    # it), as 0.19.6 does; with one returned tensor that changes no number (the update matches).
    assert records["ds-output-hooks-engine-backward"]["hits"] == 3 * 4
    assert all(records[patch]["hits"] == 0 for patch in applied - {"ds-output-hooks-engine-backward"})
    assert {record["state"] for patch, record in records.items() if patch not in applied} == {"not_needed"}


@needs("0.16.9")
@full_tier_only("CI runs verify's defaults, a fixed release and two ranks")
def test_user_config_with_auto_values(tmp_path):
    """A LLaMA-Factory-style ZeRO-2 offload config on the newest release LLaMA-Factory
    0.9.3 allows, with bf16 chosen on the command line."""
    from test_verify_config import AUTO_ZERO2_OFFLOAD

    (tmp_path / "ds_z2_offload.json").write_text(json.dumps(AUTO_ZERO2_OFFLOAD))
    proc = verify("0.16.9", "--ds-config", "ds_z2_offload.json", "--precision", "bf16", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["precision"] == "bf16" and outcome["config"]["gradient_clipping"] == 1.0
    assert not outcome["runs"]["without gradfix"]["correct"]
    assert outcome["runs"]["with gradfix"]["correct"]
    assert outcome["runs"]["with gradfix"]["gradfix"]["ds-zero2-offload-ga"]["hits"] == 6 * ENGINE_SHAPES


@needs(BUGGY)
@full_tier_only("CI runs verify's defaults, a fixed release and two ranks")
def test_several_backwards_per_step(tmp_path):
    proc = verify(BUGGY, "--ga", "1", "--backwards", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_line(proc.stdout, "without gradfix").endswith("WRONG")
    assert f"ds-zero2-offload-multi-backward: applied, corrected {12 * ENGINE_SHAPES} backward passes" in proc.stdout


def cpu_accelerator_has_fp16(release):
    """What DeepSpeed's CPU accelerator says: it asks oneDNN, which has fp16 on CPUs with
    AVX512-FP16 or AMX-FP16 and not on others."""
    probe = subprocess.run([sys.executable, "-c", "from deepspeed.accelerator import get_accelerator; "
                            "print(get_accelerator().is_fp16_supported())"],
                           env=release_env(release), capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip().splitlines()[-1] == "True"


@needs(BUGGY)
@full_tier_only("CI runs verify's defaults, a fixed release and two ranks")
def test_fp16_on_cpu(tmp_path):
    """Where this CPU has no fp16, verify says so and what to do instead (exit 2, no
    traceback); where it has, verify runs fp16 like any other precision."""
    proc = verify(BUGGY, "--precision", "fp16", cwd=tmp_path)
    assert "Exception ignored" not in proc.stderr
    if cpu_accelerator_has_fp16(BUGGY):
        assert_bug_and_fix(proc)
    else:
        assert proc.returncode == 2
        assert "CPU accelerator has no fp16" in proc.stderr


@needs(BUGGY)
@full_tier_only("CI runs verify's defaults, a fixed release and two ranks")
def test_plain_zero2_config(tmp_path):
    """ZeRO-2 without offload on 0.17.6-0.18.2 (ds-zero2-epilogue-reset)."""
    plain = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4, "zero_optimization": {"stage": 2}}
    (tmp_path / "zero2.json").write_text(json.dumps(plain))
    proc = verify(BUGGY, "--ds-config", "zero2.json", cwd=tmp_path)
    assert_bug_and_fix(proc)
    assert "ZeRO-2, offload_optimizer=none, GA 4" in proc.stdout
    assert f"ds-zero2-epilogue-reset: applied, corrected {9 * ENGINE_SHAPES} accumulation micro-steps" in proc.stdout


@needs("0.18.9")
def test_two_ranks_bf16_zero1_config(tmp_path):
    """bf16 + fp32 accumulation + ZeRO-1 (ds-bf16-zero1-last-microbatch): the bug is
    in the cross-rank reduction, so one process shows nothing and --ranks 2 shows it."""
    bf16_zero1 = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
                  "zero_optimization": {"stage": 1}, "bf16": {"enabled": True},
                  "data_types": {"grad_accum_dtype": "fp32"}}
    (tmp_path / "bf16_zero1.json").write_text(json.dumps(bf16_zero1))
    proc = verify("0.18.9", "--ds-config", "bf16_zero1.json", "--ranks", "2", cwd=tmp_path)
    assert_bug_and_fix(proc)
    assert "ZeRO-1, offload_optimizer=none, GA 4, micro-batch 2, bf16, grad_accum_dtype fp32" in proc.stdout
    assert "2 data-parallel ranks" in proc.stdout
    shapes = ENGINE_SHAPES + DIRECT_SHAPES  # 0.18.9 takes direct backwards on ZeRO-1
    assert f"ds-bf16-zero1-last-microbatch: applied, corrected {3 * shapes} accumulation boundaries" in proc.stdout


@needs("0.18.3")
@full_tier_only("CI runs verify's defaults, a fixed release and two ranks")
def test_pipeline_stages(tmp_path):
    """--pipeline-stages 2 (ds-pipeline-ga-scale, 0.18.3-0.19.2): the stage before the
    last is divided by GA twice; verify defaults to ZeRO-1 for a pipeline and says so."""
    proc = verify("0.18.3", "--pipeline-stages", "2", cwd=tmp_path)
    assert_bug_and_fix(proc)
    assert "config: ZeRO-1 without offload" in proc.stdout
    assert "a pipeline of 2 stages (train_batch)" in proc.stdout
    assert "ds-pipeline-ga-scale: applied, corrected 12 micro-batch backward passes" in proc.stdout

