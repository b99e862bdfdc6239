"""hf-deepspeed-double-ga-scale, hf-partial-window-ga-divisor and accelerate-deepspeed-short-window
with real transformers, accelerate and DeepSpeed releases:
``Trainer`` with a DeepSpeed config (fp32, the Trainer's SGD), GA 4, one SGD step,
against the plain PyTorch reference of the same step. DeepSpeed 0.16.4 has none
of the DeepSpeed bugs in these configurations (ZeRO-0 on one rank, ZeRO-2 without
offload), so only the transformers bug is seen.
"""

from pathlib import Path

import pytest
from helpers import tiered
from tfrun import (BUG, MATCH, NOT_CONFIGURED, affected, deepspeed_folder, grouped, plan, releases, run_worker, states,
                   train)

pytestmark = pytest.mark.skipif(not releases(), reason=NOT_CONFIGURED)

DEEPSPEED = "0.16.4"
PATCH = "hf-deepspeed-double-ga-scale"
ONE_RANK = ("--accumulation", "4", "--zero-stage", "0")


def in_matrix(*candidates):
    return [release for release in candidates if release in releases()]


def run(release, patched, *options, ranks=1):
    return train(release, patched, *options, ranks=ranks, deepspeed=DEEPSPEED)


WINDOW_NORMALISED = in_matrix(*tiered(("4.46.2",), full=("4.48.3",)))  # 4.48.3: below
plan(WINDOW_NORMALISED, ONE_RANK, ranks=1, deepspeed=DEEPSPEED)


@pytest.mark.parametrize("release", grouped(WINDOW_NORMALISED))
def test_window_normalised_loss_is_divided_once(release):
    unpatched = run(release, False, *ONE_RANK)
    assert abs(unpatched["update_scale"] - 0.25) < MATCH, unpatched  # divided by GA = 4 once too often
    patched = run(release, True, *ONE_RANK)
    assert patched["update_error"] < MATCH, patched
    assert patched["gradfix"][PATCH] | {"reason": ""} == {"state": "applied", "hits": 4, "reason": ""}


plan(in_matrix("4.48.3", "4.51.3"), (*ONE_RANK, "--micro-batch-mean"), ranks=1, deepspeed=DEEPSPEED)


@pytest.mark.parametrize("release", grouped(in_matrix("4.48.3")))
def test_4_48_3_micro_batch_mean_is_divided_once(release):
    """4.48 divides the micro-batch mean of a model without loss keyword arguments by
    GA itself, and DeepSpeed divides again (1/GA^2); the fixed releases divide once."""
    unpatched = run(release, False, *ONE_RANK, "--micro-batch-mean")
    assert unpatched["model_accepts_loss_kwargs"] is False
    assert abs(unpatched["update_scale"] - 0.25) < MATCH, unpatched
    patched = run(release, True, *ONE_RANK, "--micro-batch-mean")
    assert patched["update_error"] < MATCH, patched


plan(in_matrix("4.51.3"), ONE_RANK, ranks=1, deepspeed=DEEPSPEED)


@pytest.mark.parametrize("release", grouped(in_matrix("4.51.3")))
@pytest.mark.parametrize("model", ["", "--micro-batch-mean"])
def test_fixed_release_is_left_untouched(release, model):
    options = (*ONE_RANK, model) if model else ONE_RANK
    unpatched, patched = run(release, False, *options), run(release, True, *options)
    assert unpatched["update_error"] < MATCH
    assert patched["update_error"] == unpatched["update_error"]
    assert patched["gradfix"][PATCH]["state"] == "not_needed"


# DeepSpeed 0.18.3-0.19.5 divide the gradient by GA once per tensor the model returns, and a
# Trainer's model returns the loss and the logits it was computed from (1/GA^2 through
# engine.backward). 4.49+ call engine.backward(loss, scale_wrt_gas=False), which turns the
# hooks off on 0.18.4+; before 4.49 both bugs meet.
HOOKS_DEEPSPEED = "0.19.2"


@pytest.mark.parametrize("release", grouped(in_matrix(*tiered(("4.46.2",), full=("4.51.3",)))))
def test_model_output_on_deepspeed_with_output_hooks(release):
    unpatched = train(release, False, *ONE_RANK, ranks=1, deepspeed=HOOKS_DEEPSPEED)
    patched = train(release, True, *ONE_RANK, ranks=1, deepspeed=HOOKS_DEEPSPEED)
    assert patched["update_error"] < MATCH, patched
    if release == "4.46.2":
        assert unpatched["update_error"] > BUG, unpatched
        assert patched["gradfix"]["ds-output-hooks-engine-backward"]["state"] == "applied"
        assert patched["gradfix"][PATCH]["state"] == "applied"
    else:  # scale_wrt_gas=False: the hooks stay out; gradfix's engine.backward patch changes nothing
        assert unpatched["update_error"] < MATCH, unpatched
        assert patched["update_error"] == unpatched["update_error"]


@pytest.mark.parametrize("release", grouped(in_matrix("4.48.3")))
def test_two_ranks_zero2(release):
    """Both transformers bugs at once (ranks weighted equally, GA divided twice): ZeRO-2 on two ranks."""
    unpatched = run(release, False, "--zero-stage", "2", ranks=2)
    assert unpatched["update_error"] > BUG
    patched = run(release, True, "--zero-stage", "2", ranks=2)
    assert patched["update_error"] < MATCH, patched
    assert patched["rank_divergence"] == 0.0
    expected = affected(release)
    assert states(patched, expected) == {pid: "applied" for pid in expected}


SHORT_WINDOW = ("--micro-batch-mean", "--accumulation", "4", "--sequences", "3", "--zero-stage", "2")


SHORT_WINDOW_RUN = [(r, m) for r, m in tiered((("4.51.3", "llama"),), full=(("4.48.3", "gpt2"),)) if r in releases()]
for release_, model_ in SHORT_WINDOW_RUN:
    plan([release_], (*SHORT_WINDOW, "--architecture", model_), ranks=1, deepspeed=DEEPSPEED)
plan(in_matrix("4.54.0"), SHORT_WINDOW, ranks=1, deepspeed=DEEPSPEED)


@pytest.mark.parametrize("release,model", [pytest.param(r, m, marks=pytest.mark.xdist_group(f"transformers-{r}"))
                                           for r, m in SHORT_WINDOW_RUN])
def test_short_last_window_is_stepped(release, model):
    """accelerate-deepspeed-short-window: three micro-batches in the epoch's only window
    (GA 4); accelerate < 1.8 (these folders hold 1.3.0 and 1.6.0) leaves the engine
    to count them, and it never steps. With gradfix the step is taken, and its micro-batch
    means are divided by 3, not 4 (hf-partial-window-ga-divisor; on 4.48.3 the engine
    would divide a GPT-2 loss itself)."""
    options = (*SHORT_WINDOW, "--architecture", model)
    unpatched, patched = run(release, False, *options), run(release, True, *options)
    assert unpatched["update_scale"] == 0.0, unpatched  # no optimizer step at all
    assert patched["update_error"] < MATCH, patched
    assert patched["gradfix"]["accelerate-deepspeed-short-window"]["hits"] == 1  # the window's last micro-batch
    assert patched["gradfix"]["hf-partial-window-ga-divisor"]["hits"] == 3


@pytest.mark.parametrize("release", grouped(in_matrix("4.54.0")))
def test_short_last_window_with_fixed_accelerate(release):
    """With accelerate >= 1.8.0 (4.54.0's folder holds 1.9.0) the engine steps at the end
    of a short window; Trainer's micro-batch mean must still be divided by its size."""
    unpatched, patched = run(release, False, *SHORT_WINDOW), run(release, True, *SHORT_WINDOW)
    assert abs(unpatched["update_scale"] - 0.75) < MATCH, unpatched
    assert patched["update_error"] < MATCH, patched
    assert patched["gradfix"]["hf-partial-window-ga-divisor"]["hits"] == 3
    assert patched["gradfix"]["accelerate-deepspeed-short-window"]["state"] == "not_needed"


@pytest.mark.parametrize("release", grouped(in_matrix("4.51.3")))
def test_plain_accelerate_loop_keeps_the_engine_count(release):
    """A script without accelerator.accumulate relies on the engine's own count: gradfix
    must not tell the engine where windows end there (accelerate 1.6.0 in this folder)."""
    code, builds = deepspeed_folder(DEEPSPEED)
    worker = Path(__file__).resolve().parent / "accelerate_worker.py"
    runs = [run_worker(worker, [releases()[release], code], patched, [], DS_ACCELERATOR="cpu",
                       TORCH_EXTENSIONS_DIR=str(builds)) for patched in (False, True)]
    assert runs[0]["engine_steps"] == 1  # six micro-batches at GA 4
    assert runs[1]["weights"] == runs[0]["weights"]
    assert runs[1]["gradfix"]["accelerate-deepspeed-short-window"] == {"state": "applied", "hits": 0}
