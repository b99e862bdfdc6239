"""hf-num-items-not-passed: transformers 4.48.0 hands num_items_in_batch to compute_loss
only for models that do NOT take loss keyword arguments (the condition is inverted).

A model that takes them (Llama, Qwen, Mistral and most causal LMs) then computes the
mean over its own micro-batch, and ``training_step``, which sees a count, does not
divide by GA: the update is the SUM of the window's per-micro-batch means. (For other
models ``get_batch_samples`` gives no count at all, and 4.48.0 divides their loss by GA.)
4.48.1 always passes the count to compute_loss.

The fix wraps ``Trainer.training_step`` to note the window's count for a model that
takes loss keyword arguments, and ``Trainer.compute_loss`` to receive it where it was
left out (also when a subclass's compute_loss hands on its own None).
"""

from gradfix import gates
from gradfix.fixes._code import method_source
from gradfix.fixes.transformers._step import step_num_items

TARGET = "transformers.trainer"
HITS = "compute_loss calls given the window's num_items_in_batch"
UNREACHED = "no Trainer step with num_items_in_batch reached Trainer.compute_loss"
COUNT = "_gradfix_num_items"  # on the trainer: the window's count, during a step of a loss-kwargs model

INVERTED = ("if self.model_accepts_loss_kwargs: loss = self.compute_loss(model, inputs) "
            "else: loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)")
ALWAYS_PASSED = "loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)"


def probe(module):
    source = method_source(getattr(module, "Trainer", None), "training_step")
    if isinstance(source, gates.Probe):
        return source
    if INVERTED in source:
        return gates.buggy("training_step passes num_items_in_batch only to models without loss keyword arguments")
    if ALWAYS_PASSED in source:
        return gates.fixed("training_step always passes num_items_in_batch to compute_loss")
    return gates.unknown("training_step's call of compute_loss is neither the known buggy nor the fixed code")


def apply(module, patcher):
    def note_count(wrapped, trainer, args, kwargs):
        count = step_num_items(*args, **kwargs)
        if count is None or not trainer.model_accepts_loss_kwargs:
            return wrapped(*args, **kwargs)
        setattr(trainer, COUNT, count)
        try:
            return wrapped(*args, **kwargs)
        finally:
            setattr(trainer, COUNT, None)

    def pass_count(wrapped, trainer, args, kwargs):
        count = getattr(trainer, COUNT, None)
        if count is None:
            return wrapped(*args, **kwargs)
        if len(args) >= 4:  # (model, inputs, return_outputs, num_items_in_batch)
            if args[3] is not None:
                return wrapped(*args, **kwargs)
            args = (*args[:3], count, *args[4:])
        elif kwargs.get("num_items_in_batch") is None:
            kwargs = {**kwargs, "num_items_in_batch": count}
        else:
            return wrapped(*args, **kwargs)
        patcher.hit()
        return wrapped(*args, **kwargs)

    patcher.wrap(module.Trainer, "training_step", note_count)
    patcher.wrap(module.Trainer, "compute_loss", pass_count)
