"""End to end through the DeepSpeed path of a TRL user: TRL's SFTTrainer under
``accelerate launch`` with a DeepSpeed config file (ZeRO-2, optimizer offloaded to
the CPU, gradient accumulation 4), DeepSpeed 0.18.2, the newest transformers and
TRL. gradfix is activated by GRADFIX=1 alone. Without it DeepSpeed drops micro-batches
2 and 3 of the window (ds-zero2-offload-ga); with it the update matches the plain
PyTorch token mean of the step.
"""

import json
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import clean_env, failure_output, run_job
from tfrun import BUG, MATCH, deepspeed_folder, free_port

pytest.importorskip("trl", reason="TRL is installed by `nox -s transformers`")

DEEPSPEED = "0.18.2"
WORKER = Path(__file__).resolve().parent / "trl_worker.py"
CONFIG = {
    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
    "gradient_clipping": "auto", "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    "zero_force_ds_cpu_optimizer": False,  # keep the Trainer's SGD (accelerate would swap in DeepSpeedCPUAdam)
    "bf16": {"enabled": False}, "fp16": {"enabled": False},
}


def sft(patched):
    code, builds = deepspeed_folder(DEEPSPEED)
    env = clean_env(PYTHONPATH=str(code), GRADFIX="1" if patched else "0", DS_ACCELERATOR="cpu",
                    TORCH_EXTENSIONS_DIR=str(builds), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(free_port()))
    with tempfile.TemporaryDirectory(prefix="trl-") as workdir:
        config, out = Path(workdir) / "ds.json", Path(workdir) / "result.json"
        config.write_text(json.dumps(CONFIG))
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--deepspeed_config_file",
                str(config), "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", str(WORKER), str(out)]
        proc = run_job(argv, env=env, timeout=900, cwd=workdir)
        assert proc.returncode == 0 and out.exists(), f"{argv} failed: {failure_output(proc)}"
        result = json.loads(out.read_text())
    result["output"] = proc.stdout + proc.stderr
    return result


def test_trl_sft_zero2_offload_through_accelerate_launch():
    unpatched = sft(False)
    assert unpatched["deepspeed"] == DEEPSPEED and unpatched["deepspeed_enabled"], unpatched
    assert unpatched["optimizer"] == "SGD", unpatched
    assert unpatched["update_error"] > BUG, unpatched
    patched = sft(True)
    assert patched["update_error"] < MATCH, patched
    assert patched["gradfix"]["ds-zero2-offload-ga"]["state"] == "applied"
    assert patched["gradfix"]["ds-zero2-offload-ga"]["hits"] > 0
    # the exit report: the training process says what was corrected; the launcher, which
    # imports DeepSpeed too and trains nothing, says so in one line
    assert "gradfix [rank 0]: ds-zero2-offload-ga applied, corrected 2 accumulation micro-steps" in patched["output"]
    assert "gradfix: applied, never reached in this process (pid" in patched["output"]
