"""hf-loss-without-count-not-divided with TRL's DPOTrainer (dpo_worker.py): TRL 0.13.0,
the last release whose DPO, KTO, BCO and CPO trainers rely on Trainer to divide their
loss by GA, on transformers 4.48.3 and 4.51.3 (affected) and 4.53.3 (first fixed line),
without and with DeepSpeed; TRL 0.14.0, which works around the bug itself, is left alone.
One rank, GA 4, one preference pair per micro-batch: the applied update is compared with
the gradient of the mean DPO loss over the four pairs.
"""

import functools
import json
import os
from pathlib import Path

import pytest
from helpers import tiered
from tfrun import MATCH, affected, deepspeed_folder, releases, run_worker

WORKER = Path(__file__).resolve().parent / "dpo_worker.py"
PATCH = "hf-loss-without-count-not-divided"
GA = 4
TRANSFORMERS = ("4.48.3", "4.51.3", "4.53.3")  # TRL 0.13 runs on the transformers 4 line only


def trl_releases():
    """TRL release -> its folder (TRL alone; transformers comes from a transformers folder)."""
    return json.loads(os.environ.get("GRADFIX_TRL_CUSTOM_LOSS_RELEASES", "{}"))


pytestmark = pytest.mark.skipif(not trl_releases() or not releases(),
                                reason="run through `nox -s transformers` (GRADFIX_TRL_CUSTOM_LOSS_RELEASES)")


def transformers_matrix():
    return [release for release in TRANSFORMERS if release in releases()]


@functools.lru_cache(maxsize=None)
def dpo(trl, transformers, patched, deepspeed=None):
    folders, extra, options = [trl_releases()[trl], releases()[transformers]], {}, ["--accumulation", str(GA)]
    if deepspeed:
        code, builds = deepspeed_folder(deepspeed)
        folders.append(code)
        extra = {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(builds)}
        options += ["--zero-stage", "2"]
    result = run_worker(WORKER, folders, patched, options, **extra)
    assert (result["trl"], result["transformers"]) == (trl, transformers)
    return result


def fixed_logged_loss():
    """The logged loss of the first fixed transformers line (4.53.3), same data."""
    return dpo("0.13.0", "4.53.3", False)["logged_loss"]


# CI: the oldest affected transformers release and the first fixed line; the full tier adds 4.51.3.
@pytest.mark.parametrize("transformers", [r for r in transformers_matrix() if r in tiered(("4.48.3", "4.53.3"),
                                                                                          full=("4.51.3",))])
def test_dpo_loss_is_divided_by_ga(transformers):
    unpatched, patched = dpo("0.13.0", transformers, False), dpo("0.13.0", transformers, True)
    assert patched["update_error"] < MATCH, patched
    if PATCH in affected(transformers):
        assert abs(unpatched["update_scale"] - GA) < GA * MATCH, unpatched  # the sum of the window's means
        assert patched["gradfix"][PATCH]["state"] == "applied"
        assert patched["gradfix"][PATCH]["hits"] == GA  # every micro-batch of the window
        assert abs(patched["logged_loss"] - fixed_logged_loss()) < MATCH
        assert abs(unpatched["logged_loss"] - GA * fixed_logged_loss()) < GA * MATCH
    else:
        assert patched["gradfix"][PATCH]["state"] == "not_needed"
        assert unpatched["update_error"] == patched["update_error"] < MATCH


@pytest.mark.parametrize("transformers", [r for r in transformers_matrix() if PATCH in affected(r)][:1])
def test_trl_workaround_is_left_alone(transformers):
    """TRL 0.14.0 sets model_accepts_loss_kwargs=False, so Trainer divides the loss itself."""
    unpatched, patched = dpo("0.14.0", transformers, False), dpo("0.14.0", transformers, True)
    assert unpatched["model_accepts_loss_kwargs"] is False
    assert unpatched["update_error"] < MATCH, unpatched
    assert patched["update_error"] == unpatched["update_error"]
    assert (patched["gradfix"][PATCH]["state"], patched["gradfix"][PATCH]["hits"]) == ("applied", 0)


@pytest.mark.parametrize("transformers", [r for r in ("4.48.3", "4.51.3") if r in transformers_matrix()])
def test_dpo_under_deepspeed(transformers):
    """4.48.x still lets DeepSpeed divide by GA (only the log is wrong); 4.49.0 to 4.52.x
    pass scale_wrt_gas=False and nobody divides."""
    unpatched, patched = dpo("0.13.0", transformers, False, "0.16.4"), dpo("0.13.0", transformers, True, "0.16.4")
    assert patched["update_error"] < MATCH, patched
    assert abs(patched["logged_loss"] - fixed_logged_loss()) < MATCH
    assert patched["gradfix"][PATCH]["hits"] == GA
    if transformers.startswith("4.48."):
        assert unpatched["update_error"] < MATCH, unpatched
        assert abs(unpatched["logged_loss"] - GA * fixed_logged_loss()) < GA * MATCH
    else:
        assert abs(unpatched["update_scale"] - GA) < GA * MATCH, unpatched
