"""openrlhf-sft-microbatch-mean, openrlhf-sft-microbatch-mean-dp and
openrlhf-sft-epoch-boundary against real OpenRLHF releases: the real CLI (openrlhf.cli.train_sft) on a tiny Llama with
DeepSpeed on CPU, micro batch 1, GA 4, responses of 2 to 600 tokens. gradfix is
active only through GRADFIX=1.

By default the learning rate is negligible (the weights never move), so every
optimizer window's gradient norm can be checked against the plain PyTorch global
token mean over that window at the initial weights. Buggy releases must be wrong
unpatched and right patched, bit for bit equal to OpenRLHF 0.10.4 on the same
DeepSpeed; fixed releases must be left alone.
"""

import pytest

from helpers import tiered
from orlrun import FIRST_FIXED, in_matrix, matches_reference, relative_gaps, releases, same_run, sft, stacks, version

PATCH_FOR = {True: "openrlhf-sft-microbatch-mean", False: "openrlhf-sft-microbatch-mean-dp"}


def patch_id(release):
    return PATCH_FOR[version(release) < (0, 10, 3)]


def affected(release):
    return version(release) < (0, 10, 4)


def fixed_release_on(deepspeed, **options):
    """OpenRLHF 0.10.4 on the given DeepSpeed release (the comparison is bit for bit)."""
    if FIRST_FIXED not in stacks():
        pytest.skip(f"OpenRLHF {FIRST_FIXED} is not in the matrix")
    return sft(FIRST_FIXED, False, deepspeed, **options)


def check(release, world=1, **options):
    unpatched, patched = sft(release, False, world=world, **options), sft(release, True, world=world, **options)
    assert unpatched["gradfix"] is None  # GRADFIX=0: the start-up file did not even import gradfix
    windows = len(patched["reference"]["grad_norms"])
    if affected(release):
        assert min(relative_gaps(unpatched["grad_norms"], unpatched["reference"]["grad_norms"])) > 0.1, \
            "the unpatched buggy release should be far from the global token mean"
        record = patched["gradfix"][patch_id(release)]
        assert record["state"] == "applied" and record["hits"] == windows, record
        assert matches_reference(patched), (patched["grad_norms"], patched["reference"]["grad_norms"])
        assert same_run(patched, fixed_release_on(stacks()[release], world=world, **options))
    else:
        for patch in PATCH_FOR.values():
            assert patched["gradfix"][patch]["state"] == "not_needed", patched["gradfix"][patch]
        # openrlhf-sft-epoch-boundary may apply (0.10.4-0.11.1): one epoch, aligned windows, same numbers
        assert matches_reference(unpatched) and same_run(patched, unpatched)


# CI: the oldest affected release (0.7.x code), the newest of the micro-batch-mean code and the
# first fixed release; 0.9.10 (the 0.8.x-0.9.x code) runs in test_paper_configuration.py, 0.10.3
# (its normalisers) on two ranks below. The full tier adds them here, and the newest release.
SFT_RELEASES = tiered(("0.7.5", "0.10.2", "0.10.4"), full=("0.9.10", "0.10.3", "0.11.2"))


@pytest.mark.parametrize("release", in_matrix(SFT_RELEASES))
def test_sft_window_token_mean(release):
    check(release)


@pytest.mark.parametrize("release", in_matrix(tiered(("0.10.3",), full=("0.9.10", "0.11.2"))))
def test_sft_two_ranks(release):
    """0.10.3 fixed the rank part only: two ranks with GA 4 each (batch 8). ZeRO-3:
    with bf16 on two CPU ranks, DeepSpeed's ZeRO-1/2 step fails in its gloo
    all_gather_into_tensor fallback ("Output 0 of Split is a view and is being
    modified inplace", DeepSpeed 0.18.9, torch 2.13), loudly, not silently."""
    check(release, world=2, batch=8, samples=16, zero=3)


@pytest.mark.parametrize("release", in_matrix(tiered(("0.7.5",), full=("0.9.10", "0.10.3"))))
def test_sft_update_equals_fixed_release(release):
    """With a real learning rate (Adam, 3 steps), the final weights equal 0.10.4's."""
    patched = sft(release, True, lr=1e-3)
    assert patched["weights"]["distance"] > 0
    assert patched["weights"] != sft(release, False, lr=1e-3)["weights"]
    assert patched["weights"] == fixed_release_on(stacks()[release], lr=1e-3)["weights"]


SPANNING = {"samples": 10, "epochs": 2}  # GA 4: window 3 = the last 2 micro-batches of epoch 0 + the first 2 of epoch 1


# CI: the read-ahead of the micro-batch-mean patches (0.10.3), openrlhf-sft-epoch-boundary's oldest
# affected release and its first fixed one.
@pytest.mark.parametrize("release", in_matrix(tiered(("0.10.3", "0.10.4", "0.11.2"), full=("0.9.10", "0.11.1"))))
def test_sft_window_spanning_epochs(release):
    """DeepSpeed accumulates across the epoch boundary. The patches read ahead into
    the next epoch; 0.10.4-0.11.1 restart their windows per epoch (the
    openrlhf-sft-epoch-boundary bug); 0.11.2 keeps them aligned."""
    unpatched, patched = sft(release, False, **SPANNING), sft(release, True, **SPANNING)
    assert len(patched["grad_norms"]) == len(patched["reference"]["grad_norms"]) == 5
    assert matches_reference(patched), (patched["grad_norms"], patched["reference"]["grad_norms"])
    if version(release) >= (0, 11, 2):
        assert patched["gradfix"]["openrlhf-sft-epoch-boundary"]["state"] == "not_needed"
        assert same_run(patched, unpatched)
        return
    from_the_boundary = relative_gaps(unpatched["grad_norms"], unpatched["reference"]["grad_norms"])[2:]
    assert max(from_the_boundary) > 0.1, "the unpatched release should be wrong from the epoch boundary on"
    patch = "openrlhf-sft-epoch-boundary" if version(release) >= (0, 10, 4) else patch_id(release)
    assert patched["gradfix"][patch]["hits"] == 5
    if "0.11.2" in stacks():
        assert patched["grad_norms"] == sft("0.11.2", False, stacks()[release], **SPANNING)["grad_norms"]


def test_sft_disabled_patch_is_not_applied():
    release = next((r for r in releases() if r == "0.10.2"), None)
    if release is None:
        pytest.skip("0.10.2 is not in the matrix")
    result = sft(release, True, disable="openrlhf-sft-microbatch-mean")
    assert result["gradfix"]["openrlhf-sft-microbatch-mean"]["state"] == "disabled"
    assert same_run(result, sft(release, False))
