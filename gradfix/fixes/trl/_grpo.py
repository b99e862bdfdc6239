"""Shared by the GRPO fixes: which loss types normalise by ``num_items_in_batch``."""

TOKEN_COUNT_LOSSES = ("dapo", "cispo", "vespo")  # divide by a global token count, not by GA


def trainer_class(module):
    cls = getattr(module, "GRPOTrainer", None)
    return cls if isinstance(cls, type) else None
