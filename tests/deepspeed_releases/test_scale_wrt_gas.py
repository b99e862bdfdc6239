"""ds-scale-wrt-gas-ignored against real DeepSpeed releases on CPU: the training
loop scales its loss by 1/GA itself and calls engine.backward(loss,
scale_wrt_gas=False), as Hugging Face Accelerate does. 0.18.3 divides by GA a second
time; patched it must match the plain PyTorch reference and 0.18.4 (the first fixed
release); the releases around it must be untouched."""

import pytest

from dsrun import config, job_key, plan, releases, same_gradients, train, update_error, xdist_group

PATCH = "ds-scale-wrt-gas-ignored"
FIRST_FIXED = "0.18.4"
CONFIGURATIONS = {"zero1": config(stage=1, offload="none", ga=4), "zero2": config(stage=2, offload="none", ga=4)}
RELEASES = ("0.18.2", "0.18.3", FIRST_FIXED, "0.19.8")


@pytest.mark.parametrize("name", CONFIGURATIONS)
@pytest.mark.parametrize("release", [xdist_group(r) for r in releases() if r in RELEASES])
def test_user_scaled_loss(release, name):
    options = CONFIGURATIONS[name]
    reference = train(None, False, options)
    unpatched, patched = train(release, False, options, user_scaled_loss=True), train(release, True, options,
                                                                                     user_scaled_loss=True)
    record = patched["gradfix"][PATCH]
    if release == "0.18.3":
        assert update_error(unpatched, reference) > 0.7  # a quarter of the update at GA 4
        assert unpatched["grad_norms"][0] == pytest.approx(reference["grad_norms"][0] / 4, rel=1e-4)
        assert record["state"] == "applied" and record["hits"] == 3 * 4, record  # every backward of 3 steps
        assert same_gradients(patched, reference), update_error(patched, reference)
        if FIRST_FIXED in releases():
            assert same_gradients(patched, train(FIRST_FIXED, False, options, user_scaled_loss=True))
    else:
        assert record["state"] == "not_needed", record
        if release == "0.18.2" and name == "zero2":  # ds-zero2-epilogue-reset's bug: that patch corrects it
            assert same_gradients(patched, reference), update_error(patched, reference)
        else:
            assert patched["params"] == unpatched["params"]
            assert same_gradients(unpatched, reference), update_error(unpatched, reference)


@pytest.mark.parametrize("release", [xdist_group(r) for r in releases() if r == "0.18.3"])
def test_default_scaling_is_left_alone(release):
    """engine.backward(loss) (scale_wrt_gas=True): the patch changes nothing, counts nothing."""
    options = CONFIGURATIONS["zero1"]
    patched = train(release, True, options)
    assert patched["gradfix"][PATCH]["hits"] == 0
    assert patched["params"] == train(release, False, options)["params"]


# The runs above, batched per release (dsrun.plan).
plan(RELEASES, *(job_key(options, user_scaled_loss=True) for options in CONFIGURATIONS.values()))
plan(["0.18.3"], job_key(CONFIGURATIONS["zero1"]))
