"""hf-deepspeed-double-ga-scale with real transformers and DeepSpeed releases:
``Trainer`` with a DeepSpeed config (fp32, the Trainer's SGD), GA 4, one SGD step,
against the plain PyTorch reference of the same step. DeepSpeed 0.16.4 has none
of the DeepSpeed bugs in these configurations (ZeRO-0 on one rank, ZeRO-2 without
offload), so only the transformers bug is seen.
"""

import pytest
from tfrun import BUG, MATCH, NOT_CONFIGURED, affected, releases, states, train

pytestmark = pytest.mark.skipif(not releases(), reason=NOT_CONFIGURED)

DEEPSPEED = "0.16.4"
PATCH = "hf-deepspeed-double-ga-scale"
ONE_RANK = ("--accumulation", "4", "--zero-stage", "0")


def in_matrix(*candidates):
    return [release for release in candidates if release in releases()]


def run(release, patched, *options, ranks=1):
    return train(release, patched, *options, ranks=ranks, deepspeed=DEEPSPEED)


@pytest.mark.parametrize("release", in_matrix("4.46.2", "4.48.3"))
def test_window_normalised_loss_is_divided_once(release):
    unpatched = run(release, False, *ONE_RANK)
    assert abs(unpatched["update_scale"] - 0.25) < MATCH, unpatched  # divided by GA = 4 once too often
    patched = run(release, True, *ONE_RANK)
    assert patched["update_error"] < MATCH, patched
    assert patched["gradfix"][PATCH] | {"reason": ""} == {"state": "applied", "hits": 4, "reason": ""}


def test_4_48_3_micro_batch_mean_is_divided_once():
    """4.48 divides the micro-batch mean of a model without loss keyword arguments by
    GA itself, and DeepSpeed divides again (1/GA^2); the fixed releases divide once."""
    if "4.48.3" not in releases():
        pytest.skip("4.48.3 is not in the matrix")
    unpatched = run("4.48.3", False, *ONE_RANK, "--micro-batch-mean")
    assert unpatched["model_accepts_loss_kwargs"] is False
    assert abs(unpatched["update_scale"] - 0.25) < MATCH, unpatched
    patched = run("4.48.3", True, *ONE_RANK, "--micro-batch-mean")
    assert patched["update_error"] < MATCH, patched


@pytest.mark.parametrize("release", in_matrix("4.51.3"))
@pytest.mark.parametrize("model", ["", "--micro-batch-mean"])
def test_fixed_release_is_left_untouched(release, model):
    options = (*ONE_RANK, model) if model else ONE_RANK
    unpatched, patched = run(release, False, *options), run(release, True, *options)
    assert unpatched["update_error"] < MATCH
    assert patched["update_error"] == unpatched["update_error"]
    assert patched["gradfix"][PATCH]["state"] == "not_needed"


@pytest.mark.parametrize("release", in_matrix("4.48.3"))
def test_two_ranks_zero2(release):
    """Both transformers bugs at once (ranks weighted equally, GA divided twice): ZeRO-2 on two ranks."""
    unpatched = run(release, False, "--zero-stage", "2", ranks=2)
    assert unpatched["update_error"] > BUG
    patched = run(release, True, "--zero-stage", "2", ranks=2)
    assert patched["update_error"] < MATCH, patched
    assert patched["rank_divergence"] == 0.0
    expected = affected(release)
    assert states(patched, expected) == {pid: "applied" for pid in expected}
