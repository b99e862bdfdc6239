"""hf-deepspeed-double-ga-scale: under DeepSpeed, ``Trainer`` divides the loss by
gradient_accumulation_steps twice (transformers 4.46.2 to 4.48.x).

Since 4.46 the loss a model computes with ``num_items_in_batch`` is already the
micro-batch's share of the window's token mean (token sum / tokens of the whole
window), and 4.48 also divides the micro-batch mean of other models by GA itself.
``accelerator.backward`` hands that loss to ``DeepSpeedEngine.backward``, which
divides by GA once more (``scale_wrt_gas=True``, its default): gradients, updates
and the grad norm come out GA times too small. 4.49.0 passes ``scale_wrt_gas=False``.

The fix wraps ``Trainer.training_step`` to note whether this micro-batch's loss is
already normalised for the window, and ``Accelerator.backward`` to pass
``scale_wrt_gas=False`` to DeepSpeed for exactly those losses. A loss that nobody
divided yet (a micro-batch mean on 4.46.x-4.47.x, or one without labels) keeps
DeepSpeed's division, which is right for it.
"""

from gradfix import gates
from gradfix.fixes._code import flat_source, method_source
from gradfix.fixes.transformers._step import step_arguments, uses_deepspeed

TARGET = "transformers.trainer"
HITS = "micro-batch losses handed to DeepSpeed without a second division by gradient_accumulation_steps"
UNREACHED = "no Trainer step ran under DeepSpeed with a window-normalised loss"
NORMALISED = "_gradfix_loss_normalised"  # on the accelerator, for the duration of one training step
TRAINER_DIVIDES = "loss = loss / self.args.gradient_accumulation_steps"


def probe(module):
    source = method_source(getattr(module, "Trainer", None), "training_step")
    if isinstance(source, gates.Probe):
        return source
    if "scale_wrt_gas" in source:
        return gates.fixed("training_step passes scale_wrt_gas=False to DeepSpeed")
    if "num_items_in_batch" not in source:
        return gates.fixed("no window-normalised loss: the micro-batch mean needs DeepSpeed's division")
    if "self.accelerator.backward(loss" not in source:
        return gates.unknown("training_step no longer calls self.accelerator.backward(loss, ...)")
    return gates.buggy("training_step hands a window-normalised loss to DeepSpeed, which divides it by GA again")


def window_normalised(trainer, inputs, num_items_in_batch, trainer_divides):
    """Whether ``compute_loss`` + ``training_step`` already gave this micro-batch its
    share of the window (so DeepSpeed must not divide by GA again)."""
    labelled = isinstance(inputs, dict) and "labels" in inputs
    custom = getattr(trainer, "compute_loss_func", None)
    if num_items_in_batch is not None:
        if custom is not None and labelled:
            return True  # compute_loss_func(outputs, labels, num_items_in_batch=...)
        if trainer.label_smoother is not None and labelled:
            return False  # label smoothing averages over the micro-batch
        if trainer.model_accepts_loss_kwargs:
            return True  # the model divided its token sum by the window's count
    # 4.48: training_step divides the micro-batch mean of other models by GA itself
    return trainer_divides and not trainer.model_accepts_loss_kwargs and custom is None


def apply(module, patcher):
    from accelerate import accelerator as accelerate_module

    trainer_divides = TRAINER_DIVIDES in flat_source(module.Trainer.training_step)

    def note_normalised_loss(wrapped, trainer, args, kwargs):
        inputs, num_items = step_arguments(*args, **kwargs)
        accelerator = trainer.accelerator
        setattr(accelerator, NORMALISED, window_normalised(trainer, inputs, num_items, trainer_divides))
        try:
            return wrapped(*args, **kwargs)
        finally:
            setattr(accelerator, NORMALISED, False)

    def divide_once(wrapped, accelerator, args, kwargs):
        if uses_deepspeed(accelerator) and getattr(accelerator, NORMALISED, False) and "scale_wrt_gas" not in kwargs:
            kwargs = {**kwargs, "scale_wrt_gas": False}
            patcher.hit()
        return wrapped(*args, **kwargs)

    patcher.wrap(module.Trainer, "training_step", note_normalised_loss)
    patcher.wrap(accelerate_module.Accelerator, "backward", divide_once)
