"""Import-only stand-in for vLLM, which OpenRLHF 0.7.x imports whenever its trainer
package is imported (through the PPO trainer) and which has no CPU wheel. The SFT
path never calls it; using anything raises."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("vllm is a test stand-in here; this path needs the real package")
