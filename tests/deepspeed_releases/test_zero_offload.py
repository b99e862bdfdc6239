"""ds-zero2-offload-ga, ds-zero2-offload-multi-backward and ds-zero2-epilogue-reset
against real DeepSpeed releases on CPU. Every DeepSpeed run activates gradfix only through GRADFIX=1 (the
worker imports gradfix, but GRADFIX=0 switches it off for the unpatched runs).

For each buggy release: unpatched must differ from the plain PyTorch reference
(the test sees the bug), patched must match it and the first fixed release. The
fixed releases must report NOT_NEEDED and give the same numbers with and without
gradfix.
"""

import pytest
from helpers import tiered

from dsrun import (FIRST_FIXED, config, in_matrix, job_key, plan, releases, same_gradients, train, update_error, version,
                   xdist_group)

GA_AFFECTED = lambda r: (0, 15, 2) <= version(r) < (0, 19, 0)  # noqa: E731
MULTI_AFFECTED = lambda r: version(r) < (0, 19, 0)  # noqa: E731
ZERO2_EPILOGUE_BUG = lambda r: (0, 17, 6) <= version(r) < (0, 18, 3)  # noqa: E731  (ds-D)
# Each bug on the releases around its range and at both ends of each source variant; the
# matrix's other releases are there for other patches (CI time: each DeepSpeed run costs a
# process start). ds-zero2-offload-ga: 0.15.1 (last before), 0.15.2-0.18.2 (variant 1),
# 0.18.3-0.18.9 (variant 2), 0.19.0 (first fixed), 0.19.8 (newest); 0.16.9 is the middle of
# variant 1 and the release LLaMA-Factory 0.9.3 allows.
OFFLOAD_GA_MATRIX = tiered(["0.15.2", "0.16.9", "0.18.2", "0.18.3", "0.18.9", "0.19.0", "0.19.8"], full=["0.15.1"])
# ds-zero2-offload-multi-backward: every release before 0.19.0 (0.14.5 the oldest in the matrix).
MULTI_MATRIX = ["0.14.5", "0.15.2", "0.18.3", "0.18.9", "0.19.0", "0.19.8"]
# ds-zero2-epilogue-reset: 0.16.9 (before), 0.17.6-0.18.2, 0.18.3 (first fixed), 0.19.8.
EPILOGUE_MATRIX = tiered(["0.16.9", "0.18.2", "0.18.3", "0.19.8"], full=["0.17.6"])
GA4 = config(stage=2, offload="cpu", ga=4)
MULTI = config(stage=2, offload="cpu", ga=1)


def check_release(release, options, patch_id, affected, hits, backwards=1, first_fixed=FIRST_FIXED):
    reference = train(None, False, options, backwards)
    unpatched, patched = train(release, False, options, backwards), train(release, True, options, backwards)
    record = patched["gradfix"][patch_id]
    assert unpatched["gradfix"] is None  # GRADFIX=0: the start-up file did not even import gradfix
    if affected:
        assert not same_gradients(unpatched, reference, 1e-2), "the unpatched buggy release should be wrong"
        assert unpatched["grad_norms"][0] < reference["grad_norms"][0]  # the truncated gradient's norm
        assert record["state"] == "applied" and record["hits"] == hits, record
        assert same_gradients(patched, reference), update_error(patched, reference)
        if first_fixed in releases():
            assert same_gradients(patched, train(first_fixed, False, options, backwards))
    else:
        assert record["state"] == "not_needed", record
        assert same_gradients(unpatched, reference) and patched["params"] == unpatched["params"]


@pytest.mark.parametrize("release", in_matrix(OFFLOAD_GA_MATRIX))
def test_ga4_offload(release):
    check_release(release, GA4, "ds-zero2-offload-ga", GA_AFFECTED(release), hits=3 * 2)  # 3 steps x micro 2, 3


@pytest.mark.parametrize("release", in_matrix(MULTI_MATRIX))
def test_multi_backward_offload(release):
    check_release(release, MULTI, "ds-zero2-offload-multi-backward", MULTI_AFFECTED(release), hits=3 * 4,
                  backwards=4)  # 3 steps x 4 backwards


@pytest.mark.parametrize("release", in_matrix(EPILOGUE_MATRIX))
def test_ga4_without_offload(release):
    check_release(release, config(stage=2, offload="none", ga=4), "ds-zero2-epilogue-reset",
                  ZERO2_EPILOGUE_BUG(release), hits=3 * 3, first_fixed="0.18.3")  # 3 steps x micro 1, 2, 3


@pytest.mark.parametrize("release", in_matrix(EPILOGUE_MATRIX))
def test_several_backwards_without_offload(release):
    check_release(release, config(stage=2, offload="none", ga=1), "ds-zero2-epilogue-reset",
                  ZERO2_EPILOGUE_BUG(release), hits=3 * 3, backwards=4, first_fixed="0.18.3")


CONFIGURATIONS = {
    "ga2": config(stage=2, offload="cpu", ga=2),  # N = 2 is not affected: the patch must not change it
    "ga3": config(stage=2, offload="cpu", ga=3),
    "ga8": config(stage=2, offload="cpu", ga=8),
    "clip": config(stage=2, offload="cpu", ga=4, clipping=0.5),  # clipping sees the full norm
    "zero1": config(stage=1, offload="cpu", ga=4),  # ZeRO-1 + offload must stay correct (the leak trap)
    "nvme": config(stage=2, offload="nvme", ga=4),  # runs on CPU: stage 1/2 need no NVMe I/O op
    "overlap-comm": config(stage=2, offload="cpu", ga=4, overlap_comm=True),
    "no-offload-overlap-comm": config(stage=2, offload="none", ga=4, overlap_comm=True),
    "zero1-no-offload": config(stage=1, offload="none", ga=4),  # not affected by any of the bugs
    "no-offload-ga2": config(stage=2, offload="none", ga=2),  # ds-D needs only N = 2
    "no-offload-bf16": config(stage=2, offload="none", ga=4, precision="bf16"),
}


# Every configuration on the oldest release of each source variant of the offload bug; a
# smoke list on the newest of each (the same code: what could differ is the release's
# surroundings). 0.15.2 also holds the ZeRO-1 + offload trap of the upstream one-liner.
VARIANT_FIRSTS, VARIANT_LASTS = ["0.15.2", "0.18.3"], ["0.18.2", "0.18.9"]
SMOKE = ["ga3", "clip", "zero1"]
PATCHED_CONFIGURATIONS = [pytest.param(release, name, marks=pytest.mark.xdist_group(f"deepspeed-{release}"))
                          for release in releases() if release in VARIANT_FIRSTS + VARIANT_LASTS
                          for name in CONFIGURATIONS if release in VARIANT_FIRSTS or name in SMOKE]


@pytest.mark.parametrize("release, name", PATCHED_CONFIGURATIONS)
def test_patched_configurations_match_the_reference(release, name):
    options = CONFIGURATIONS[name]
    patched, reference = train(release, True, options), train(None, False, options)
    if name.endswith("bf16"):  # rounding: compare with the first fixed release's bf16 run instead
        assert update_error(patched, reference) < 0.2
        if FIRST_FIXED in releases():
            assert same_gradients(patched, train(FIRST_FIXED, False, options))
    else:
        assert same_gradients(patched, reference), update_error(patched, reference)


@pytest.mark.parametrize("release", [xdist_group(r) for r in releases() if r in MULTI_MATRIX and MULTI_AFFECTED(r)])
def test_zero1_several_backwards_match_the_reference(release):
    options = config(stage=1, offload="cpu", ga=1)
    patched = train(release, True, options, 4)
    assert same_gradients(patched, train(None, False, options, 4))


BF16_RELEASES = ["0.16.9", "0.18.2", "0.18.9"]  # one per source variant and the newest buggy release


@pytest.mark.parametrize("release", in_matrix(BF16_RELEASES))
def test_bf16_matches_the_first_fixed_release(release):
    """bf16 differs from the fp32 reference by rounding, so the comparison that
    counts is with the first fixed release running the same bf16 arithmetic."""
    if FIRST_FIXED not in releases():
        pytest.skip(f"needs {FIRST_FIXED}")
    options = config(stage=2, offload="cpu", ga=4, precision="bf16")
    fixed, reference = train(FIRST_FIXED, False, options), train(None, False, options)
    unpatched, patched = train(release, False, options), train(release, True, options)
    assert update_error(fixed, reference) < 0.2  # bf16 rounding only
    assert update_error(unpatched, reference) > 0.3  # dropped micro-batches
    assert same_gradients(patched, fixed), update_error(patched, fixed)
    assert patched["dtype"] == "bfloat16"


# Two data-parallel ranks on the CPU accelerator work up to 0.18.6 and from 0.19.0
# (0.18.7-0.18.9 crash in step() there, a loud failure fixed upstream in 0.19.0). With
# offload: one release per source variant of ds-zero2-offload-ga; without:
# ds-zero2-epilogue-reset's newest release. The full tier adds the first fixed release and the
# newest (one rank checks them in CI).
TWO_RANKS = tiered([("0.16.9", "cpu"), ("0.18.6", "cpu"), ("0.18.2", "none")], full=[("0.19.0", "cpu"), ("0.19.8", "none")])


@pytest.mark.parametrize("release, offload", [(r, o) for r, o in TWO_RANKS if r in releases()])
def test_two_ranks(release, offload):
    options = config(stage=2, offload=offload, ga=4)
    reference = train(None, False, options, 1, 2)
    unpatched, patched = train(release, False, options, 1, 2), train(release, True, options, 1, 2)
    assert patched["world"] == 2
    assert same_gradients(patched, reference), update_error(patched, reference)
    affected = GA_AFFECTED(release) if offload == "cpu" else ZERO2_EPILOGUE_BUG(release)
    assert same_gradients(unpatched, reference) == (not affected)


# Every single-process run above, batched per release (dsrun.plan): one process per release
# and gradfix setting instead of one per run.
ZERO1_SEVERAL = config(stage=1, offload="cpu", ga=1)
BF16_OFFLOAD = config(stage=2, offload="cpu", ga=4, precision="bf16")
plan(set(OFFLOAD_GA_MATRIX + MULTI_MATRIX + EPILOGUE_MATRIX + BF16_RELEASES),
     job_key(GA4), job_key(MULTI, 4), job_key(config(stage=2, offload="none", ga=4)),
     job_key(config(stage=2, offload="none", ga=1), 4), job_key(ZERO1_SEVERAL, 4), job_key(BF16_OFFLOAD))
plan(VARIANT_FIRSTS + VARIANT_LASTS + [FIRST_FIXED], *(job_key(options) for options in CONFIGURATIONS.values()))
