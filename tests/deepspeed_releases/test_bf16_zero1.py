"""ds-bf16-zero1-last-microbatch against real DeepSpeed releases on CPU, two
data-parallel ranks (the bug is in the cross-rank reduction; one rank is not
affected). bf16 differs from the fp32 reference by rounding (about 0.1 of an
update here), so the comparison that counts is with the first fixed release
running the same bf16 arithmetic: bit for bit.
"""

import pytest
from helpers import tiered

from dsrun import FIRST_FIXED, config, releases, train, update_error, version

PATCH = "ds-bf16-zero1-last-microbatch"
AFFECTED = lambda r: (0, 18, 5) <= version(r) < (0, 19, 0)  # noqa: E731
# bf16 model + fp32 accumulation + ZeRO-1 without offload: DeepSpeed's BF16_Optimizer.
BF16_ZERO1 = config(stage=1, offload="none", ga=4, precision="bf16", grad_accum_dtype="fp32")
# The newest affected release and the first fixed one; the full tier adds the oldest affected one
# and the last before the bug. (0.18.7-0.18.9 crash on two CPU ranks with ZeRO-2, not with this
# ZeRO-1 path.)
TWO_RANK_RELEASES = tiered(["0.18.9", FIRST_FIXED], full=["0.18.2", "0.18.5"])
BF16_ROUNDING, DROPPED = 0.2, 0.3


@pytest.mark.parametrize("release", [r for r in releases() if r in TWO_RANK_RELEASES])
def test_two_ranks(release):
    reference = train(None, False, BF16_ZERO1, 1, 2)
    unpatched, patched = train(release, False, BF16_ZERO1, 1, 2), train(release, True, BF16_ZERO1, 1, 2)
    record = patched["gradfix"][PATCH]
    assert patched["world"] == 2 and patched["dtype"] == "bfloat16"
    if AFFECTED(release):
        assert update_error(unpatched, reference) > DROPPED, "the unpatched buggy release should be wrong"
        assert record["state"] == "applied" and record["hits"] == 3, record  # one boundary per step
        assert update_error(patched, reference) < BF16_ROUNDING
        if FIRST_FIXED in releases():
            assert patched["params"] == train(FIRST_FIXED, False, BF16_ZERO1, 1, 2)["params"]
    else:
        assert record["state"] == "not_needed", record
        assert patched["params"] == unpatched["params"]
        assert update_error(unpatched, reference) < BF16_ROUNDING


@pytest.mark.parametrize("release", [r for r in releases() if r in tiered(("0.18.9",), full=("0.18.5",))])
def test_one_rank_changes_rounding_only(release):
    """One rank has nothing to reduce: the patch counts no correction, and the new
    order changes only the bf16 rounding of the sum, exactly as the fixed release."""
    reference, unpatched, patched = (train(None, False, BF16_ZERO1), train(release, False, BF16_ZERO1),
                                     train(release, True, BF16_ZERO1))
    record = patched["gradfix"][PATCH]
    assert record["state"] == "applied" and record["hits"] == 0, record
    assert "never reached" in record["evidence"]
    assert max(update_error(unpatched, reference), update_error(patched, reference)) < BF16_ROUNDING
    if FIRST_FIXED in releases():
        assert patched["params"] == train(FIRST_FIXED, False, BF16_ZERO1)["params"]
