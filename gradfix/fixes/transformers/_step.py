"""What the transformers fixes read off a ``Trainer.training_step`` call and its accelerator."""


def step_arguments(model, inputs, num_items_in_batch=None, *args, **kwargs):
    """``(inputs, num_items_in_batch)`` of a training_step call, however it was made."""
    return inputs, num_items_in_batch


def step_num_items(*args, **kwargs):
    """The window's num_items_in_batch passed to training_step (None when there is none)."""
    return step_arguments(*args, **kwargs)[1]


def uses_deepspeed(accelerator) -> bool:
    return getattr(getattr(accelerator, "distributed_type", None), "name", None) == "DEEPSPEED"
