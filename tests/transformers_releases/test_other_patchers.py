"""Other patchers on real transformers code.

Unsloth's order: gradfix patches Trainer when transformers.trainer
is imported, then Unsloth rebuilds ``Trainer.training_step`` from its source and assigns the
copy (``exec`` in ``unsloth.models._utils``, function ``_unsloth_training_step``; its
``Trainer.get_batch_samples`` comes from ``unsloth_zoo.loss_utils``). Unsloth needs an NVIDIA
GPU to import, so the test sets exactly those markers. gradfix must report each patch whose
wrapper was dropped as a conflict and withdraw the rest of it, never report it applied.

Axolotl 0.6.0 (the real package, installed without its GPU dependencies): for a Llama trained
with DeepSpeed and gradient accumulation it replaces ``Trainer._inner_training_loop`` with an
edited copy of its source (transformers 4.46.3 is the release whose loop its edit matches).
gradfix does not patch the loop, and its wrappers are still called from Axolotl's copy, so the
patches stay applied and the update must still match the reference.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, tiered
from tfrun import BUG, MATCH, NOT_CONFIGURED, affected, deepspeed_folder, releases, run_worker

REPLACE_LIKE_UNSLOTH = """
import inspect, json, textwrap
import transformers.trainer as trainer_module
import gradfix
from transformers import Trainer

before = {s.id: [s.state, list(s.locations)] for s in gradfix.status()}
source = textwrap.dedent(inspect.getsource(Trainer.training_step))  # the source of the original
namespace = dict(vars(trainer_module), __name__="unsloth.models._utils")
exec(source.replace("def training_step", "def _unsloth_training_step", 1), namespace)
Trainer.training_step = namespace["_unsloth_training_step"]

original_get_batch_samples = vars(Trainer)["get_batch_samples"]
def _unsloth_get_batch_samples(self, epoch_iterator, num_batches, *args):
    return original_get_batch_samples(self, epoch_iterator, num_batches, *args)
_unsloth_get_batch_samples.__module__ = "unsloth_zoo.loss_utils"
Trainer.get_batch_samples = _unsloth_get_batch_samples

after = {s.id: [s.state, s.reason] for s in gradfix.status()}
print("RESULT", json.dumps({"before": before, "after": after}))
"""

WORKER = Path(__file__).resolve().parent / "trainer_worker.py"
RELEASES = tiered(("4.51.3",), full=("4.46.2",))


@pytest.mark.parametrize("release", [r for r in RELEASES if r in releases()] or
                         [pytest.param("none", marks=pytest.mark.skip(reason=NOT_CONFIGURED))])
def test_unsloth_replacing_training_step_after_gradfix_is_a_conflict(release):
    env = clean_env(PYTHONPATH=releases()[release] or None, GRADFIX="1")
    proc = subprocess.run([sys.executable, "-c", REPLACE_LIKE_UNSLOTH], env=env, capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    trainer_patches = {pid for pid, (_, where) in result["before"].items()
                       if any(w.endswith(("Trainer.training_step", "Trainer.get_batch_samples")) for w in where)}
    applied_before = {pid for pid, (state, _) in result["before"].items() if state == "applied"}
    assert trainer_patches and trainer_patches <= applied_before <= affected(release) | affected(release, "accelerate")
    for pid in trainer_patches:
        state, reason = result["after"][pid]
        assert state == "conflict", (pid, reason)
        assert "replaced by code from unsloth" in reason
        assert f"{pid} conflict:" in proc.stderr
    for pid in applied_before - trainer_patches:  # patches elsewhere (TrainingArguments) stay
        assert result["after"][pid][0] == "applied", (pid, result["after"][pid])


def axolotl():
    """{"folder": Axolotl 0.6.0 + peft + transformers 4.46.3, "stack": the folder behind it}."""
    return json.loads(os.environ.get("GRADFIX_AXOLOTL", "{}"))


@pytest.mark.skipif(not axolotl(), reason="run through `nox -s transformers` (GRADFIX_AXOLOTL)")
def test_axolotl_training_loop_keeps_gradfix_correct():
    code, builds = deepspeed_folder("0.16.4")
    folders = [axolotl()["folder"], axolotl()["stack"], code]
    options = ["--axolotl", "--zero-stage", "2"]
    extra = {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(builds)}
    unpatched, patched = (run_worker(WORKER, folders, on, options, ranks=2, **extra) for on in (False, True))
    for result in unpatched, patched:
        assert result["transformers"] == "4.46.3"
        assert result["training_loop_from"] == "axolotl.monkeypatch.trainer_grad_accum"  # Axolotl's loop ran
    assert unpatched["update_error"] > BUG, unpatched
    assert patched["update_error"] < MATCH, patched
    applied = {pid for pid, s in patched["gradfix"].items() if s["state"] == "applied"}
    assert "hf-deepspeed-double-ga-scale" in applied and not any(
        s["state"] == "conflict" for s in patched["gradfix"].values())
