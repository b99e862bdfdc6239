"""openrlhf-ppo-critic-microbatch-mean-dp: OpenRLHF 0.10.3 PPO critic training
normalises each micro-batch's loss by that micro-batch's token count over all
ranks; accumulation micro-batches still weigh equally (``_ppo_dp``)."""

from . import _ppo, _ppo_dp

ROLE = _ppo.CRITIC
TARGET = ROLE.target
REPLACES = ("CriticPPOTrainer.ppo_train",)
HITS, UNREACHED = _ppo.HITS, ROLE.unreached


def probe(module):
    return _ppo_dp.probe(module, ROLE)


def apply(module, patcher):
    _ppo_dp.apply(module, ROLE, patcher)
