"""hf-dp-token-average and hf-ddp-no-sync-inverted with real transformers releases:
``Trainer`` on two CPU ranks (torchrun, gloo), four sequences of 1 to 40 target
tokens, GA 2, one SGD step. The applied update is compared with a plain PyTorch
global token mean over the whole step (computed in the worker from the same
initial weights); the first fixed releases (4.54.0 and the newest) match it
without gradfix.
"""

import pytest
from helpers import tiered
from tfrun import BUG, MATCH, NOT_CONFIGURED, affected, grouped, matrix, plan, releases, states, train

pytestmark = pytest.mark.skipif(not releases(), reason=NOT_CONFIGURED)


# The patches that the default run (two ranks, GA 2, full windows, a token-sum loss) needs.
TWO_RANK_PATCHES = {"hf-dp-token-average", "hf-ddp-no-sync-inverted", "hf-num-items-not-passed"}
# CI: the oldest affected release (hf-ddp-no-sync-inverted, hf-mean-loss-not-divided), 4.48.0
# (hf-num-items-not-passed), the newest affected one and the first fixed one; 4.48.3 and 4.51.3
# run the compute_loss_func and DeepSpeed tests. The full tier adds them here, and the newest.
NEWEST = matrix()[-1:]
DEFAULT_RUN = [r for r in matrix() if r in tiered(("4.46.2", "4.48.0", "4.53.3", "4.54.0"),
                                                   full=("4.48.3", "4.51.3", *NEWEST))]
TOKEN_AVERAGE_NEWEST = [r for r in matrix() if "hf-dp-token-average" in affected(r)][-1:]
CUSTOM_LOSS = [r for r in ("4.48.3", "4.51.3") if r in releases()]
plan(DEFAULT_RUN, ())
plan(TOKEN_AVERAGE_NEWEST, ("--average-tokens", "false"))
plan(CUSTOM_LOSS, ("--custom-loss",), ("--custom-loss", "--average-tokens", "true"))


@pytest.mark.parametrize("release", grouped(DEFAULT_RUN))
def test_unpatched_release(release):
    """The test sees the bug: affected releases miss the global token mean, fixed ones match it."""
    result = train(release, False)
    if affected(release) & TWO_RANK_PATCHES:
        assert result["update_error"] > BUG, result
    else:
        assert result["update_error"] < MATCH, result
        assert result["average_tokens_across_devices"] is True


@pytest.mark.parametrize("release", grouped(DEFAULT_RUN))
def test_gradfix_matches_the_global_token_mean(release):
    result = train(release, True)
    assert result["update_error"] < MATCH, result
    assert result["rank_divergence"] == 0.0, result
    patches = {e for e in result["gradfix"] if e.startswith("hf-")}
    assert patches >= {"hf-dp-token-average", "hf-ddp-no-sync-inverted", "hf-mean-loss-not-divided"}
    expected = affected(release)
    assert states(result, expected) == {pid: "applied" for pid in expected}, result["gradfix"]
    assert states(result, patches - expected) == {pid: "not_needed" for pid in patches - expected}
    if "hf-dp-token-average" in expected:
        assert result["gradfix"]["hf-dp-token-average"]["hits"] == 1
        assert "average_tokens_across_devices=True (the default from transformers 4.54.0)" in result["log"]
    if "hf-num-items-not-passed" in expected:
        assert result["gradfix"]["hf-num-items-not-passed"]["hits"] == 2  # both micro-batches of the window
    if "hf-ddp-no-sync-inverted" in expected:
        assert result["gradfix"]["hf-ddp-no-sync-inverted"]["hits"] > 0


@pytest.mark.parametrize("release", grouped(r for r in DEFAULT_RUN if not affected(r) & TWO_RANK_PATCHES))
def test_fixed_release_left_untouched(release):
    """Same update with and without gradfix; nothing outside the release's affected
    ranges is patched, and nothing is corrected in this run."""
    unpatched, patched = train(release, False), train(release, True)
    assert patched["update_error"] == unpatched["update_error"]
    expected = affected(release)
    assert all(state["hits"] == 0 and state["state"] == ("applied" if pid in expected else "not_needed")
               for pid, state in patched["gradfix"].items() if pid.startswith("hf-"))


@pytest.mark.parametrize("release", grouped(r for r in ("4.46.2",) if r in DEFAULT_RUN))
def test_4_46_2_ranks_drift_without_gradfix(release):
    """4.46.2 keeps the last micro-batch of a window local: the ranks end with different weights."""
    assert train(release, False)["rank_divergence"] > 0
    assert train(release, True)["rank_divergence"] == 0


@pytest.mark.parametrize("release", grouped(TOKEN_AVERAGE_NEWEST))
def test_explicit_false_is_kept_and_reported(release):
    unpatched = train(release, False)
    kept = train(release, True, "--average-tokens", "false")
    assert kept["average_tokens_across_devices"] is False
    assert kept["update_error"] == unpatched["update_error"] > BUG
    assert kept["gradfix"]["hf-dp-token-average"]["hits"] == 0
    assert "average_tokens_across_devices=False was chosen explicitly and is kept" in kept["log"]


@pytest.mark.parametrize("release", grouped(CUSTOM_LOSS))
def test_compute_loss_func_keeps_its_scale(release):
    """A compute_loss_func with a model that takes no loss keyword arguments: before
    4.49.0 Trainer does not multiply that loss by the number of ranks, so turning the
    option on alone would halve the update at two ranks; gradfix multiplies it."""
    unpatched = train(release, False, "--custom-loss")
    assert unpatched["model_accepts_loss_kwargs"] is False
    assert unpatched["update_error"] > BUG
    patched = train(release, True, "--custom-loss")
    assert patched["update_error"] < MATCH, patched
    assert abs(patched["update_scale"] - 1) < MATCH


@pytest.mark.parametrize("release", grouped(r for r in ("4.48.3",) if r in CUSTOM_LOSS))
def test_4_48_3_explicit_true_halves_a_custom_loss(release):
    """The reason for the multiplication above, shown on the release itself."""
    result = train(release, False, "--custom-loss", "--average-tokens", "true")
    assert abs(result["update_scale"] - 0.5) < MATCH, result


@pytest.mark.parametrize("release", grouped(TOKEN_AVERAGE_NEWEST))
def test_one_rank_is_left_alone(release):
    """One process: nothing to average across; the option stays off, as 4.54.0 turns it off."""
    result = train(release, True, "--accumulation", "4", ranks=1)
    assert result["update_error"] < MATCH
    assert result["average_tokens_across_devices"] is False
    assert result["gradfix"]["hf-dp-token-average"]["hits"] == 0


MEAN_LOSS = ("--architecture", "gpt2", "--micro-batch-mean", "--accumulation", "4")  # one rank, GA 4
MEAN_LOSS_RUN = [r for r in ("4.46.2", "4.48.3") if r in releases()]
plan(MEAN_LOSS_RUN, MEAN_LOSS, ranks=1)
plan(TOKEN_AVERAGE_NEWEST, ("--accumulation", "4"), ranks=1)


@pytest.mark.parametrize("release", grouped(MEAN_LOSS_RUN))
def test_micro_batch_mean_loss_is_divided_by_ga(release):
    """GPT-2's forward takes no loss keyword arguments before 4.48: its loss is a micro-batch
    mean, which 4.46.2-4.47.x hand to backward undivided (the update GA times too large)."""
    unpatched, patched = train(release, False, *MEAN_LOSS, ranks=1), train(release, True, *MEAN_LOSS, ranks=1)
    assert unpatched["model_accepts_loss_kwargs"] is False
    assert patched["update_error"] < MATCH, patched
    if "hf-mean-loss-not-divided" in affected(release):
        assert abs(unpatched["update_scale"] - 4) < MATCH, unpatched
        assert patched["gradfix"]["hf-mean-loss-not-divided"]["hits"] == 4
    else:
        assert unpatched["update_error"] == patched["update_error"]
        assert patched["gradfix"]["hf-mean-loss-not-divided"]["state"] == "not_needed"


SHORT_WINDOW = ("--architecture", "gpt2", "--micro-batch-mean", "--accumulation", "4", "--sequences", "3")


# CI: the oldest affected release (4.46.2-4.47 do not divide at all), the newest affected one
# and the newest (fixed) release; the full tier adds the releases between them.
SHORT_WINDOW_RUN = [r for r in matrix() if r in tiered(("4.46.2", "4.54.0", *NEWEST),
                                                       full=("4.48.0", "4.48.3", "4.51.3", "4.53.3"))]
plan(SHORT_WINDOW_RUN, SHORT_WINDOW, ranks=1)


@pytest.mark.parametrize("release", grouped(SHORT_WINDOW_RUN))
def test_short_last_window_divides_by_its_own_size(release):
    """hf-partial-window-ga-divisor: three micro-batches in a window of GA 4 (the epoch's
    only, short, window), micro-batch mean losses; the reference is their mean."""
    unpatched, patched = train(release, False, *SHORT_WINDOW, ranks=1), train(release, True, *SHORT_WINDOW, ranks=1)
    assert patched["update_error"] < MATCH, patched
    if "hf-partial-window-ga-divisor" in affected(release):
        assert unpatched["update_error"] > BUG, unpatched  # x0.75 (x3 on 4.46.2-4.47: not divided at all)
        assert patched["gradfix"]["hf-partial-window-ga-divisor"]["hits"] == 3
    else:
        assert patched["update_error"] == unpatched["update_error"]
