"""ds-output-hooks-engine-backward and ds-output-hooks-direct-backward against real
DeepSpeed releases on CPU, for the call shapes of the verify worker: what the model
returns (its prediction, a ModelOutput-like {"loss", "logits"}, (loss, logits,
hidden), a shared loss with a second forward of engine.module, a loss that includes an
auxiliary loss returned beside it, as MoE models do) times how backward is
called (engine.backward, a direct loss.backward()). One process per release and
gradfix setting trains all shapes.

Unpatched, the shapes the output hooks mis-scale must be wrong (the test sees the
bug) and every other shape right; patched, every shape must match the plain PyTorch
reference (fp32: 1e-6) and, for engine.backward, the first fixed release 0.19.6.
"""

import pytest

from dsrun import config, in_matrix, job_key, plan, releases, same_gradients, train, update_error, version

ENGINE_PATCH, DIRECT_PATCH = "ds-output-hooks-engine-backward", "ds-output-hooks-direct-backward"
FIRST_FIXED = "0.19.6"
SHAPES = ("tensor:engine", "model-output:engine", "tuple:engine", "shared:engine", "aux:engine",
          "tensor:direct", "model-output:direct", "tuple:direct", "shared:direct", "aux:direct")
PER_BACKWARD = len(SHAPES) // 2  # shapes per way of calling backward
STEPS = 3


def mis_scaled(release, stage, shape) -> bool:
    """Whether the unpatched release computes this shape wrong (with GA > 1)."""
    output, _, backward = shape.partition(":")
    if version(release) < (0, 18, 3) or output == "tensor":
        return False
    if backward == "engine" and version(release) >= (0, 19, 6):
        return False
    # ZeRO-3 hands back its own copies of the returned tensors: only a shared loss is hit.
    return output == "shared" if stage == 3 else True


def direct_supported(release, stage) -> bool:
    return version(release) >= (0, 18, 3) and stage >= 1


def check(release, stage, options, precision="fp32", world=1, other_bug=False):
    """``other_bug``: the release has another bug in this configuration (every shape is
    wrong unpatched) that another patch corrects in the same run."""
    ga = dict(options)["ga"]
    reference = train(None, False, options, world=world, calls=SHAPES)
    unpatched = train(release, False, options, world=world, calls=SHAPES)
    patched = train(release, True, options, world=world, calls=SHAPES)
    fixed = train(FIRST_FIXED, False, options, world=world, calls=SHAPES) if FIRST_FIXED in releases() else None
    tolerance = 1e-6 if precision == "fp32" else 0.2
    for shape in SHAPES:
        want, got, before = reference["calls"][shape], patched["calls"][shape], unpatched["calls"][shape]
        if shape.endswith(":direct") and not direct_supported(release, stage):
            assert "skipped" in got and "skipped" in before, got
            continue
        if mis_scaled(release, stage, shape) or other_bug:
            assert update_error(before, want) > 0.3, f"{shape}: the unpatched release should be wrong"
        else:
            assert same_gradients(before, want, tolerance), (shape, update_error(before, want))
        assert same_gradients(got, want, tolerance), (shape, update_error(got, want))
        if shape.endswith(":engine") and fixed is not None and precision == "fp32":
            assert same_gradients(got, fixed["calls"][shape]), (shape, update_error(got, fixed["calls"][shape]))
    records = patched["gradfix"]
    engine_affected = (0, 18, 3) <= version(release) < (0, 19, 6)
    if engine_affected:
        assert records[ENGINE_PATCH]["state"] == "applied"
        assert records[ENGINE_PATCH]["hits"] == PER_BACKWARD * STEPS * ga, records[ENGINE_PATCH]  # every engine.backward
    else:
        assert records[ENGINE_PATCH]["state"] == "not_needed", records[ENGINE_PATCH]
    if version(release) >= (0, 18, 3):
        direct_passes = PER_BACKWARD * STEPS * ga if direct_supported(release, stage) else 0
        assert records[DIRECT_PATCH]["state"] == "applied"
        assert records[DIRECT_PATCH]["hits"] == direct_passes, records[DIRECT_PATCH]
    else:
        assert records[DIRECT_PATCH]["state"] == "not_needed", records[DIRECT_PATCH]
        assert patched["params"] == unpatched["params"]


# 0.16.9: before the hooks. 0.18.3: the hook divides whatever scale_wrt_gas says
# (ds-scale-wrt-gas-ignored applies too). 0.19.2: the flag-checked hook. 0.19.5: the
# last affected release (the functorch-aware hook). 0.19.6: first fixed engine.backward.
# 0.19.8: the newest; direct backwards still wrong.
MATRIX = ("0.16.9", "0.18.3", "0.19.2", "0.19.5", "0.19.6", "0.19.8")
ZERO2_GA4 = config(stage=2, offload="none", ga=4)
ZERO1_GA3 = config(stage=1, offload="none", ga=3)
ZERO0_GA2 = config(stage=0, offload="none", ga=2)
ZERO3_GA3 = config(stage=3, offload="none", ga=3)
BF16_ZERO1_GA4 = config(stage=1, offload="none", ga=4, precision="bf16")
OFFLOAD_GA4 = config(stage=2, offload="cpu", ga=4)
NEWEST_AND_MIDDLE = ("0.19.2", "0.19.8")


@pytest.mark.parametrize("release", in_matrix(MATRIX))
def test_zero2_ga4(release):
    check(release, 2, ZERO2_GA4)


@pytest.mark.parametrize("release", in_matrix(NEWEST_AND_MIDDLE))
def test_zero1_ga3(release):
    check(release, 1, ZERO1_GA3)


@pytest.mark.parametrize("release", in_matrix(("0.19.5",)))
def test_zero0_ga2(release):
    """ZeRO-0 refuses direct backwards; engine.backward is mis-scaled and corrected."""
    check(release, 0, ZERO0_GA2)


@pytest.mark.parametrize("release", in_matrix(NEWEST_AND_MIDDLE))
def test_zero3_ga3(release):
    """ZeRO-3 returns its own copies of the outputs: only the shared loss is mis-scaled."""
    check(release, 3, ZERO3_GA3)


@pytest.mark.parametrize("release", in_matrix(("0.19.2",)))
def test_bf16_zero1_ga4(release):
    check(release, 1, BF16_ZERO1_GA4, precision="bf16")


@pytest.mark.parametrize("release", in_matrix(("0.18.6",)))
def test_zero2_offload_ga4(release):
    """With ds-zero2-offload-ga on the same release: both corrections together."""
    check(release, 2, OFFLOAD_GA4, other_bug=True)


@pytest.mark.parametrize("release", [r for r in releases() if r == "0.19.2"])
def test_two_ranks_zero2_ga2(release):
    check(release, 2, config(stage=2, offload="none", ga=2), world=2)


# Each test's single-process runs, with the first fixed release's, batched per release.
for options, wanted in ((ZERO2_GA4, MATRIX), (ZERO1_GA3, NEWEST_AND_MIDDLE), (ZERO0_GA2, ("0.19.5",)),
                        (ZERO3_GA3, NEWEST_AND_MIDDLE), (BF16_ZERO1_GA4, ("0.19.2",)), (OFFLOAD_GA4, ("0.18.6",))):
    plan([*wanted, FIRST_FIXED], job_key(options, calls=SHAPES))
