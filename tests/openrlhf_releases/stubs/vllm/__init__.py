"""Import-only stand-in for vLLM, which OpenRLHF imports whenever its PPO trainer
package is imported and which has no CPU wheel. Neither the SFT path nor the PPO
training step the tests run calls it; using anything raises."""

__version__ = "0.0.0"  # read by OpenRLHF 0.10.x's actor set-up (a version check only)


def _unavailable(*args, **kwargs):
    raise RuntimeError("vllm is a test stand-in here; this path needs the real package")


SamplingParams = _unavailable
