"""ds-bf16-zero0-unfused against real DeepSpeed releases on CPU: bf16 without ZeRO
(stage 0), GA 4. bf16 differs from the fp32 reference by rounding (about 0.1 of an
update), so the patched buggy releases are compared with the first fixed release
(0.18.6) bit for bit; the bug costs 0.7 (gradients kept across steps, 0.17.6-0.18.2)
or 1.0 (a frozen model, 0.18.3-0.18.5) of an update."""

import pytest
from helpers import tiered

from dsrun import config, in_matrix, job_key, plan, releases, train, update_error, version

PATCH = "ds-bf16-zero0-unfused"
FIRST_FIXED = "0.18.6"
AFFECTED = lambda r: (0, 17, 6) <= version(r) < (0, 18, 6)  # noqa: E731
BF16_ZERO0 = config(stage=0, offload="none", ga=4, precision="bf16")
# bf16 + fp32 accumulation + ZeRO-1 reaches the same optimizer on 0.17.6-0.18.4 (a constant clash)
BF16_FP32_ZERO1 = config(stage=1, offload="none", ga=4, precision="bf16", grad_accum_dtype="fp32")
# Before the bug, each variant's newest (0.18.2) or oldest (0.18.3) release, first fixed, newest;
# the full tier adds the oldest and newest affected releases.
MATRIX = tiered(["0.16.9", "0.18.2", "0.18.3", FIRST_FIXED, "0.19.8"], full=["0.17.6", "0.18.5"])
BF16_ROUNDING, WRONG = 0.2, 0.5


@pytest.mark.parametrize("release", in_matrix(MATRIX))
def test_bf16_without_zero(release):
    reference = train(None, False, BF16_ZERO0)
    unpatched, patched = train(release, False, BF16_ZERO0), train(release, True, BF16_ZERO0)
    record = patched["gradfix"][PATCH]
    assert patched["dtype"] == "bfloat16"
    if AFFECTED(release):
        assert update_error(unpatched, reference) > WRONG
        assert record["state"] == "applied" and record["hits"] == 3, record  # every optimizer step
        assert update_error(patched, reference) < BF16_ROUNDING
        assert patched["grad_norms"] == pytest.approx(reference["grad_norms"], rel=0.02)
        if FIRST_FIXED in releases():
            assert patched["params"] == train(FIRST_FIXED, False, BF16_ZERO0)["params"]
    else:
        assert record["state"] == "not_needed", record
        assert patched["params"] == unpatched["params"]
        assert update_error(unpatched, reference) < BF16_ROUNDING


# CI: the first variant (gradients kept across steps); the full tier adds the second (frozen).
@pytest.mark.parametrize("release", [r for r in releases() if r in tiered(("0.18.2",), full=("0.18.5",))])
def test_bf16_without_zero_two_ranks(release):
    options = BF16_ZERO0
    reference = train(None, False, options, 1, 2)
    unpatched, patched = train(release, False, options, 1, 2), train(release, True, options, 1, 2)
    assert update_error(unpatched, reference) > WRONG
    assert update_error(patched, reference) < BF16_ROUNDING
    if FIRST_FIXED in releases():
        assert patched["params"] == train(FIRST_FIXED, False, options, 1, 2)["params"]


FP32_ACCUMULATION = tiered(["0.18.2", "0.18.3"], full=["0.17.6"])


@pytest.mark.parametrize("release", in_matrix(FP32_ACCUMULATION))
def test_fp32_accumulation_sent_down_the_same_path(release):
    """ZeRO-1 + bf16 + fp32 accumulation on 0.17.6-0.18.4: the loss scale part of the
    fix makes it right (accumulating in bf16, not fp32: rounding-level differences
    from 0.18.5's BF16_Optimizer)."""
    reference = train(None, False, BF16_FP32_ZERO1)
    unpatched, patched = train(release, False, BF16_FP32_ZERO1), train(release, True, BF16_FP32_ZERO1)
    assert patched["gradfix"][PATCH]["hits"] == 3
    assert update_error(patched, reference) < BF16_ROUNDING
    assert patched["grad_norms"] == pytest.approx(reference["grad_norms"], rel=0.02)
    wrong_norm = unpatched["grad_norms"][0] > 1000 * reference["grad_norms"][0]  # 0.17.6-0.18.2: x65536
    assert wrong_norm or update_error(unpatched, reference) > WRONG  # 0.18.3-0.18.4: frozen


# The single-process runs above, batched per release (dsrun.plan).
plan(MATRIX, job_key(BF16_ZERO0))
plan(FP32_ACCUMULATION, job_key(BF16_FP32_ZERO1))
