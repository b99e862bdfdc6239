"""openrlhf-ppo-critic-dynamic-batch-boundary: OpenRLHF PPO critic training with
dynamic batching never marks the inner backwards of an optimizer step, so DeepSpeed
ZeRO-1/2 keeps only the last micro-batch of each step (``_ppo_boundary``)."""

from . import _ppo, _ppo_boundary

ROLE = _ppo.CRITIC
TARGET = ROLE.target
REPLACES = ("CriticPPOTrainer.training_step",)
HITS = _ppo_boundary.HITS
UNREACHED = f"no OpenRLHF PPO {ROLE.model} training step with dynamic batching ran under ZeRO-1/2"


def probe(module):
    return _ppo_boundary.probe(module, ROLE)


def apply(module, patcher):
    _ppo_boundary.apply(module, ROLE, patcher)
