"""openrlhf-ppo-actor-microbatch-mean: OpenRLHF 0.7.0-0.10.2 PPO actor training
averages each micro-batch's loss over its own tokens, then DeepSpeed averages
micro-batches and ranks equally (``_ppo_microbatch``)."""

from . import _ppo, _ppo_microbatch

ROLE = _ppo.ACTOR
TARGET = ROLE.target
REPLACES = ("ActorPPOTrainer.ppo_train", "ActorPPOTrainer.training_step")
HITS, UNREACHED = _ppo.HITS, ROLE.unreached


def probe(module):
    return _ppo_microbatch.probe(module, ROLE)


def apply(module, patcher):
    _ppo_microbatch.apply(module, ROLE, patcher)
