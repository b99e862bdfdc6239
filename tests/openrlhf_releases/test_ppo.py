"""openrlhf-ppo-{actor,critic}-microbatch-mean, -microbatch-mean-dp,
openrlhf-ppo-dynamic-batch-sample-fraction and openrlhf-ppo-{actor,critic}-dynamic-batch-boundary
against real OpenRLHF releases: the
release's own PPO actor or critic (built from its CLI's arguments by its own Ray
actor class, without Ray) trains on a tiny Llama with
DeepSpeed on CPU, micro batch 1, GA 2 or 4, responses of 2 to 600 tokens, the PPO
ratio 1 and a negligible learning rate. gradfix is active only through GRADFIX=1.

Every optimizer window's gradient norm is checked against the plain PyTorch token
mean over the window at the initial weights (ppo_run.py). Buggy releases must be
wrong unpatched and right patched, and equal OpenRLHF 0.10.4 on the same DeepSpeed:
bit for bit on 0.10.3 (the same formula, fed the same normalisers), to bf16 rounding
before (the micro-batch mean times its share of the window, rather than the masked
sum over the window's count). Fixed releases must be left alone.

With dynamic batching the windows are the replay buffer's optimizer steps (micro-batches
of at most 300 tokens, DeepSpeed at GA 1) and the reference OpenRLHF is 0.10.3 and later.
No release marks the inner backwards of such a step for DeepSpeed; ZeRO-1/2 runs are
checked against the reference and the same release's ZeRO-3 run, which accumulates.
"""

import os

import pytest

from helpers import tiered
from orlrun import FIRST_FIXED, in_matrix, matches_reference, ppo, relative_gaps, releases, stacks, version

PATCHES = {role: {True: f"openrlhf-ppo-{role}-microbatch-mean", False: f"openrlhf-ppo-{role}-microbatch-mean-dp"}
           for role in ("actor", "critic")}
# OpenRLHF's critic returns its backbone's output beside the values computed from it, and
# DeepSpeed 0.18.3-0.19.5 divide the gradient reaching every returned tensor by GA: on those
# releases the backbone gets 1/GA^2 (0.10.4 too) unless ds-output-hooks-engine-backward
# corrects it. The critic tests run on each release's own DeepSpeed (0.18.9 for 0.9.10 and
# 0.10.3), so that patch is part of what they prove; the first fixed OpenRLHF release they
# are compared with runs with gradfix on too (it needs the DeepSpeed patch and nothing else).
# CRITIC_DEEPSPEED: a release without the output hooks or ZeRO-2 accumulation bugs, for a
# critic run that must already be right.
CRITIC_DEEPSPEED = os.environ.get("GRADFIX_OPENRLHF_CRITIC_DEEPSPEED", "0.16.9")
OUTPUT_HOOKS_PATCH = "ds-output-hooks-engine-backward"
SAME_UPDATE = 1e-3  # bf16 rounding of a differently ordered normalisation; the bug is >= 10%


def patch_id(role, release):
    return PATCHES[role][version(release) < (0, 10, 3)]


def affected(release):
    return version(release) < (0, 10, 4)


def output_hooks_affect(deepspeed):
    return (0, 18, 3) <= version(deepspeed) < (0, 19, 6)


def check(release, role="actor", world=1, **options):
    deepspeed = stacks()[release]
    critic_needs_deepspeed_patch = role == "critic" and output_hooks_affect(deepspeed)
    unpatched = ppo(release, False, deepspeed, world=world, role=role, **options)
    patched = ppo(release, True, deepspeed, world=world, role=role, **options)
    assert unpatched["gradfix"] is None  # GRADFIX=0: the start-up file did not even import gradfix
    windows = len(patched["reference"]["grad_norms"])
    assert windows == len(patched["grad_norms"]) >= 2
    if affected(release):
        assert max(relative_gaps(unpatched["grad_norms"], unpatched["reference"]["grad_norms"])) > 0.1, \
            "the unpatched buggy release should be far from the window token mean"
        record = patched["gradfix"][patch_id(role, release)]
        assert record["state"] == "applied" and record["hits"] == windows, record
        assert matches_reference(patched), (patched["grad_norms"], patched["reference"]["grad_norms"])
        if critic_needs_deepspeed_patch:
            assert patched["gradfix"][OUTPUT_HOOKS_PATCH]["hits"] > 0, patched["gradfix"][OUTPUT_HOOKS_PATCH]
        if FIRST_FIXED in stacks():
            fixed = ppo(FIRST_FIXED, critic_needs_deepspeed_patch, deepspeed, world=world, role=role, **options)
            if version(release) >= (0, 10, 3):
                assert patched["grad_norms"] == fixed["grad_norms"]
            else:
                assert max(relative_gaps(patched["grad_norms"], fixed["grad_norms"])) <= SAME_UPDATE, \
                    (patched["grad_norms"], fixed["grad_norms"])
    else:
        for patch in [*PATCHES["actor"].values(), *PATCHES["critic"].values()]:
            assert patched["gradfix"][patch]["state"] == "not_needed", patched["gradfix"][patch]
        assert matches_reference(unpatched) and patched["grad_norms"] == unpatched["grad_norms"]


# CI: the oldest (0.7.x flags and Experience) and newest release of the micro-batch-mean code and
# the first fixed one; 0.10.3's normalisers on two ranks below. The full tier adds the paper's
# (0.8.x-0.9.x code) and 0.10.3 on one rank. The newest release (0.11.2) runs the dynamic
# batching tests.
ACTOR_RELEASES = tiered(("0.7.5", "0.10.2", "0.10.4"), full=("0.9.10", "0.10.3"))


@pytest.mark.parametrize("release", in_matrix(ACTOR_RELEASES))
def test_ppo_actor_window_token_mean(release):
    check(release)


@pytest.mark.parametrize("release", in_matrix(tiered(("0.10.3",), full=("0.9.10",))))
def test_ppo_actor_two_ranks(release):
    """0.10.3 fixed the rank part only: two ranks with GA 2 each, whose responses
    differ. ZeRO-3, as in test_sft_two_ranks (DeepSpeed's ZeRO-1/2 step fails on two
    CPU ranks with bf16)."""
    check(release, world=2, zero=3)


@pytest.mark.parametrize("release", in_matrix(tiered(("0.9.10", "0.10.3"), full=("0.7.5",))))
def test_ppo_critic_window_token_mean(release):
    """Also runs 0.10.4's critic (the comparison), which no critic patch touches
    (test_ppo_actor_window_token_mean checks every PPO patch is not needed there). 0.9.10
    and 0.10.3 run on DeepSpeed 0.18.9, whose output hooks the DeepSpeed patch corrects."""
    check(release, role="critic")


def test_ppo_actor_sequence_level_loss_is_reported_not_corrected():
    """GSPO's sequence-level loss is outside what the 0.7.0-0.10.2 fix computes: the
    run is left to OpenRLHF, and the user is told."""
    release = next((r for r in releases() if r == "0.9.10"), None)
    if release is None:
        pytest.skip("0.9.10 is not in the matrix")
    result = ppo(release, True, policy_loss="gspo")
    assert result["gradfix"][patch_id("actor", release)]["hits"] == 0
    assert result["grad_norms"] == ppo(release, False, policy_loss="gspo")["grad_norms"]
    assert "OpenRLHF PPO actor is not corrected in this run: a sequence-level loss" in result["log"]


DYNAMIC_PATCH = "openrlhf-ppo-dynamic-batch-sample-fraction"
# ZeRO-3 (or 0) for the token-share tests: with GA 1, DeepSpeed 0.18.3+ ZeRO-1/2 keep only the
# last of several backward() calls per step unless the caller marks the inner ones, which
# OpenRLHF never does (openrlhf-ppo-*-dynamic-batch-boundary, tested below).
DYNAMIC_TOKENS = 300


def boundary_patch(role):
    return f"openrlhf-ppo-{role}-dynamic-batch-boundary"


def check_dynamic(release, role="actor", world=1, zero=3):
    options = {"world": world, "role": role, "dynamic_batch": DYNAMIC_TOKENS, "zero": zero}
    unpatched = ppo(release, False, **options)
    patched = ppo(release, True, **options)
    steps = len(patched["reference"]["grad_norms"])
    assert steps == len(patched["grad_norms"]) >= 2
    record = patched["gradfix"][DYNAMIC_PATCH]
    if version(release) >= (0, 10, 3):
        assert record["state"] == "not_needed", record
        assert matches_reference(unpatched) and patched["grad_norms"] == unpatched["grad_norms"]
        return
    assert max(relative_gaps(unpatched["grad_norms"], unpatched["reference"]["grad_norms"])) > 0.1, \
        "the unpatched buggy release should be far from the step's token mean"
    assert record["state"] == "applied" and record["hits"] == steps, record
    for patch in [*PATCHES[role].values(), boundary_patch(role)]:  # GA 1, ZeRO-3/0: nothing else to do
        assert patched["gradfix"][patch]["hits"] == 0, patched["gradfix"][patch]
    assert matches_reference(patched), (patched["grad_norms"], patched["reference"]["grad_norms"])
    if FIRST_FIXED in stacks():
        fixed = ppo(FIRST_FIXED, False, stacks()[release], **options)
        assert max(relative_gaps(patched["grad_norms"], fixed["grad_norms"])) <= SAME_UPDATE, \
            (patched["grad_norms"], fixed["grad_norms"])


@pytest.mark.parametrize("release", in_matrix(tiered(("0.10.2", "0.10.3"), full=("0.8.11",))))
def test_ppo_dynamic_batching_token_share(release):
    """The newest affected release (0.10.x argument names) and the first fixed one; the
    0.8.x-0.9.x code runs on two ranks below, the oldest release with dynamic batching
    (0.8.11) in the full tier."""
    check_dynamic(release)


@pytest.mark.parametrize("release", [r for r in releases() if r == "0.9.10"])
def test_ppo_dynamic_batching_two_ranks(release):
    """The data-parallel part: ranks whose steps hold different token counts."""
    check_dynamic(release, world=2)


@pytest.mark.parametrize("release", [r for r in releases() if r == "0.9.10"])
def test_ppo_critic_dynamic_batching(release):
    """ZeRO-0: the reference's fp32 copy of the critic is taken from unpartitioned weights."""
    check_dynamic(release, role="critic", zero=0)


def check_boundary(release, deepspeed, role="actor", **options):
    """Dynamic batching under ZeRO-2: every inner backward of a step marked, and the
    step's gradient the reference's. Returns (unpatched, patched)."""
    options = {"role": role, "dynamic_batch": DYNAMIC_TOKENS, "zero": 2, **options}
    unpatched, patched = ppo(release, False, deepspeed, **options), ppo(release, True, deepspeed, **options)
    steps = len(patched["reference"]["grad_norms"])
    assert steps == len(patched["grad_norms"]) >= 2 and patched["micro_batches"] > steps
    record = patched["gradfix"][boundary_patch(role)]
    assert record["state"] == "applied" and record["hits"] == patched["micro_batches"] - steps, record
    assert matches_reference(patched), (patched["grad_norms"], patched["reference"]["grad_norms"])
    return unpatched, patched


@pytest.mark.parametrize("release", [r for r in releases() if r == "0.11.2"])
def test_ppo_dynamic_batching_zero2_keeps_every_micro_batch(release):
    """The newest release on its DeepSpeed (0.19.8): unpatched, ZeRO-2 keeps only each
    step's last micro-batch; patched, it computes what the same release's ZeRO-3 does."""
    unpatched, patched = check_boundary(release, stacks()[release])
    assert max(relative_gaps(unpatched["grad_norms"], unpatched["reference"]["grad_norms"])) > 0.1, \
        "unpatched ZeRO-2 should lose micro-batches"
    # bf16 rounding differs: ZeRO-2 sums the step in bf16 gradients (0.33% apart on 0.19.8)
    zero3 = ppo(release, False, stacks()[release], role="actor", dynamic_batch=DYNAMIC_TOKENS, zero=3)
    assert max(relative_gaps(patched["grad_norms"], zero3["grad_norms"])) <= 5e-3, \
        (patched["grad_norms"], zero3["grad_norms"])


@pytest.mark.parametrize("release", in_matrix(tiered((), full=("0.9.10",))))
def test_ppo_dynamic_batching_paper_stack_with_offload(release):
    """The paper's stack (DeepSpeed 0.18.9), ZeRO-2 with Adam offload: the token share,
    the boundary marks and ds-zero2-offload-multi-backward together give the reference.
    (Full tier: CI proves each of the three on its own.)"""
    unpatched, patched = check_boundary(release, stacks()[release], adam_offload=True)
    assert max(relative_gaps(unpatched["grad_norms"], unpatched["reference"]["grad_norms"])) > 0.1
    assert patched["gradfix"][DYNAMIC_PATCH]["hits"] == len(patched["grad_norms"])
    assert patched["gradfix"]["ds-zero2-offload-multi-backward"]["hits"] > 0


@pytest.mark.parametrize("release", [r for r in releases() if r == "0.11.2"])
def test_ppo_critic_dynamic_batching_zero2_right_already_is_unchanged(release):
    """DeepSpeed 0.16.9 without offload accumulates unmarked backwards: the marks must
    leave that correct run exactly as it was."""
    unpatched, patched = check_boundary(release, CRITIC_DEEPSPEED, role="critic")
    assert matches_reference(unpatched)
    assert patched["grad_norms"] == unpatched["grad_norms"]
