"""LLaMA-Factory end to end: ``llamafactory-cli train <yaml>`` of real releases on CPU,
activated only by GRADFIX=1, against a plain PyTorch reference of the same samples
(lf_run.py). 0.9.3 (the first release with the multimodal bug; it pins transformers
4.52.4 and DeepSpeed <= 0.16.9, both buggy) and 0.9.5 (the newest; transformers 4.57.6,
DeepSpeed 0.18.2)."""

import pytest
from helpers import full_tier_only, tiered

from lfrun import BUG, MATCH, evidence, train

RELEASES = ["0.9.3", "0.9.5"]


@pytest.mark.parametrize("release", RELEASES)
def test_multimodal_sft_is_normalised_over_the_window(release):
    """A processor in the model folder: LLaMA-Factory averages each micro-batch on its own."""
    unpatched = train(release, False, "--processor", "--ga", "4")
    patched = train(release, True, "--processor", "--ga", "4")
    assert unpatched["update_error"] > BUG, unpatched
    assert patched["update_error"] < MATCH, patched
    assert any("corrected 4 micro-batch losses" in line for line in evidence(patched, "lf-mm-token-sum")), patched
    # One optimizer step, logged (rounded to 4 decimals) as the window's token mean.
    assert len(patched["logged_losses"]) == 1, patched
    assert abs(patched["logged_losses"][0] - patched["token_mean_loss"]) < 1e-3, patched


# CI: 0.9.3 (DeepSpeed 0.16.9, transformers 4.52.4: both patches); the full tier adds 0.9.5.
@pytest.mark.parametrize("release", tiered(["0.9.3"], full=["0.9.5"]))
def test_deepspeed_offload_on_two_ranks(release):
    """ds_z2_offload_config.json settings, GA 3, two ranks: the DeepSpeed patch (and on
    transformers 4.52.4 hf-dp-token-average) reach LLaMA-Factory's CustomSeq2SeqTrainer."""
    options = ("--deepspeed", "--ranks", "2", "--ga", "3")
    unpatched = train(release, False, *options)
    patched = train(release, True, *options)
    assert unpatched["update_error"] > BUG, unpatched
    assert patched["update_error"] < MATCH, patched
    assert any("corrected" in line for line in evidence(patched, "ds-zero2-offload-ga")), patched
    if release == "0.9.3":  # transformers 4.52.4: each rank normalised by its own tokens
        assert any("corrected" in line for line in evidence(patched, "hf-dp-token-average")), patched


@full_tier_only("CI proves the multimodal and the DeepSpeed offload corrections in separate runs")
def test_multimodal_with_deepspeed_offload_on_two_ranks():
    """Every correction at once: processor path, DeepSpeed offload, two ranks."""
    patched = train("0.9.3", True, "--processor", "--deepspeed", "--ranks", "2", "--ga", "3")
    assert patched["update_error"] < MATCH, patched


def test_text_only_run_is_left_untouched():
    """Without a processor LLaMA-Factory is already right: gradfix changes nothing."""
    unpatched = train("0.9.5", False, "--ga", "4")
    patched = train("0.9.5", True, "--ga", "4")
    assert unpatched["update_error"] < MATCH, unpatched
    assert patched["update_error"] == unpatched["update_error"], (patched, unpatched)
    assert any("never reached" in line for line in evidence(patched, "lf-mm-token-sum")), patched


def test_a_chosen_loss_is_left_alone():
    """use_dft_loss: the run chose its own compute_loss_func, which gradfix keeps (and says so)."""
    unpatched = train("0.9.5", False, "--processor", "--loss", "dft", "--ga", "4")
    patched = train("0.9.5", True, "--processor", "--loss", "dft", "--ga", "4")
    assert patched["update_error"] == unpatched["update_error"], (patched, unpatched)
    assert any("left alone: the run chose its own loss" in line for line in patched["notes"]), patched
