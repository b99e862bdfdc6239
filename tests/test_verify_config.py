"""`gradfix verify` without DeepSpeed: turning user configs into runnable ones, and
clear errors for bad input."""

import json
import math
import subprocess
import sys

import pytest

from gradfix.verify import compare, dsconfig
from helpers import clean_env

# The shape of LLaMA-Factory's examples/deepspeed/ds_z2_offload_config.json and of
# most Trainer configs: everything the Trainer fills in is "auto".
AUTO_ZERO2_OFFLOAD = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}},
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "reduce_bucket_size": "auto",
        "overlap_comm": False,
        "contiguous_gradients": True,
    },
    "wandb": {"enabled": True},
}


def test_auto_values_are_resolved_and_listed():
    config, changes = dsconfig.adapt(AUTO_ZERO2_OFFLOAD)
    assert config["train_micro_batch_size_per_gpu"] == dsconfig.DEFAULT_MICRO_BATCH
    assert config["gradient_accumulation_steps"] == dsconfig.DEFAULT_GA
    assert config["gradient_clipping"] == dsconfig.DEFAULT_CLIPPING
    for dropped in ("train_batch_size", "optimizer", "scheduler", "wandb"):
        assert dropped not in config and any(change.startswith(dropped) for change in changes)
    assert "reduce_bucket_size" not in config["zero_optimization"]
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["fp16"]["enabled"] is False and config["bf16"]["enabled"] is False
    assert config["fp16"]["initial_scale_power"] == 16  # untouched settings stay
    assert dsconfig.precision_of(config) == "fp32" and any("choose with --precision" in c for c in changes)
    assert config["zero_force_ds_cpu_optimizer"] is False  # plain SGD, no op build
    assert AUTO_ZERO2_OFFLOAD["optimizer"]["type"] == "AdamW"  # the user's dict is not modified


def test_explicit_values_are_kept():
    user = {"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 6, "gradient_clipping": 0.3,
            "bf16": {"enabled": True}, "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}
    config, changes = dsconfig.adapt(user)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (3, 6)
    assert config["gradient_clipping"] == 0.3 and dsconfig.precision_of(config) == "bf16"
    assert changes == []
    assert dsconfig.describe(config) == ("ZeRO-1, offload_optimizer=cpu, GA 6, micro-batch 3, bf16, "
                                         "clipping 0.3")


def test_precision_override_and_nvme():
    user = {"fp16": {"enabled": True},
            "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "/local"}}}
    config, changes = dsconfig.adapt(user, precision="bf16")
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert any("was nvme" in change for change in changes)
    assert any("--precision" in change for change in changes)


@pytest.mark.parametrize("bad, message", [
    ([1, 2], "a DeepSpeed config is a JSON object"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be a positive integer"),
    ({"train_micro_batch_size_per_gpu": "many"}, "train_micro_batch_size_per_gpu must be a positive integer"),
])
def test_bad_configs_say_what_is_wrong(bad, message):
    with pytest.raises(dsconfig.ConfigError, match=message):
        dsconfig.adapt(bad)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(dsconfig.ConfigError, match="cannot read"):
        dsconfig.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(dsconfig.ConfigError, match="not valid JSON"):
        dsconfig.load(broken)


def test_update_error_is_relative_to_the_reference_update():
    reference = {"initial": [0.0, 0.0], "params": [[3.0, 4.0]]}  # an update of length 5
    assert compare.Comparison({"params": [[3.0, 4.0]]}, reference, "fp32").update_errors == [0.0]
    wrong = compare.Comparison({"params": [[0.0, 4.0]]}, reference, "fp32")  # 3 away
    assert wrong.update_errors == [pytest.approx(0.6)] and not wrong.correct


def test_evidence_lines():
    records = {
        "a": {"state": "applied", "hits": 6, "evidence": "corrected 6 micro-steps", "reason": ""},
        "b": {"state": "applied", "hits": 0, "evidence": "never reached", "reason": ""},
        "c": {"state": "not_needed", "hits": 0, "evidence": "", "reason": "fixed"},
        "d": {"state": "unsupported", "hits": 0, "evidence": "", "reason": "changed code"},
        "e": {"state": "disabled", "hits": 0, "evidence": "", "reason": "disabled by GRADFIX_DISABLE"},
    }
    assert compare.evidence_text(records) == [
        "a: applied, corrected 6 micro-steps",
        "d: unsupported (changed code)",
        "e: disabled (disabled by GRADFIX_DISABLE)",
        "also applied, not reached by this configuration: b",
    ]


def test_verify_without_deepspeed_says_what_to_do(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gradfix", "verify"], capture_output=True, text=True,
                          env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 2
    assert "DeepSpeed is not installed" in proc.stderr and proc.stdout == ""


def test_verify_with_a_bad_config_file(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"gradient_accumulation_steps": -1}))
    proc = subprocess.run([sys.executable, "-m", "gradfix", "verify", "--ds-config", "ds.json"],
                          capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 2
    assert "gradient_accumulation_steps must be a positive integer" in proc.stderr


@pytest.mark.parametrize("arguments, message", [
    (["--ds-config", "zero2.json", "--pipeline-stages", "2"],
     "--pipeline-stages needs ZeRO stage 0 or 1 (the config has 2)"),
    (["--pipeline-stages", "2", "--backwards", "2"], "--pipeline-stages and --backwards cannot be combined"),
    (["--pipeline-stages", "-1"], "--pipeline-stages 0 or more"),
])
def test_verify_pipeline_options_are_checked(tmp_path, arguments, message):
    zero2 = {"gradient_accumulation_steps": 4, "zero_optimization": {"stage": 2}}
    (tmp_path / "zero2.json").write_text(json.dumps(zero2))
    proc = subprocess.run([sys.executable, "-m", "gradfix", "verify", *arguments], capture_output=True, text=True,
                          env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stdout == ""


def test_percent_text_stays_readable():
    assert compare.percent_text([3.0, 0.284, 0.00005]) == "300% / 28% / <0.01%"


def test_a_step_that_is_not_finite_is_never_correct():
    reference = {"initial": [0.0, 0.0], "params": [[3.0, 4.0], [6.0, 8.0], [9.0, 12.0]]}
    nan = float("nan")
    for bad_step in range(3):  # max() of a list with a NaN depends on where the NaN is
        params = [[3.0, 4.0], [6.0, 8.0], [9.0, 12.0]]
        params[bad_step] = [nan, 4.0]
        comparison = compare.Comparison({"params": params}, reference, "fp32")
        assert not comparison.correct and math.isnan(comparison.largest_error), bad_step
    assert compare.percent_text([nan]) == "NaN"
    short = compare.Comparison({"params": [[3.0, 4.0]]}, reference, "fp32")
    assert not short.correct  # a run that stopped early is not a match
