"""hf-mean-loss-not-divided: without DeepSpeed, ``Trainer`` never divides a micro-batch
mean loss by gradient_accumulation_steps (transformers 4.46.2 to 4.47.x).

When a loss comes without ``num_items_in_batch`` (a model whose forward takes no loss
keyword arguments, such as GPT-2 before 4.48, a compute_loss that ignores the count,
or a batch without labels), it is the mean over its own micro-batch and the window's
micro-batches must be averaged. 4.46.2 stopped letting accelerate divide by GA and
divides only the logged value, so the gradient is the SUM of the micro-batch means:
GA times too large. 4.48.0 divides that loss by GA before ``accelerator.backward``.

The fix wraps ``Trainer.training_step`` to note that this micro-batch's loss came
without a count, and ``Accelerator.backward`` to divide it by GA, as 4.48.0 does.
Under DeepSpeed the engine divides by GA itself and nothing changes.
"""

from gradfix import gates
from gradfix.fixes._code import method_source
from gradfix.fixes.transformers._step import step_num_items, uses_deepspeed

TARGET = "transformers.trainer"
HITS = "micro-batch mean losses divided by gradient_accumulation_steps"
UNREACHED = "no Trainer step without DeepSpeed had a loss without num_items_in_batch and GA > 1"
MEAN_LOSS_ARGS = "_gradfix_mean_loss_args"  # on the accelerator: the TrainingArguments, for one training step


def probe(module):
    source = method_source(getattr(module, "Trainer", None), "training_step")
    if isinstance(source, gates.Probe):
        return source
    if "loss = loss / self.args.gradient_accumulation_steps" in source:
        return gates.fixed("training_step divides a mean loss by GA before backward")
    if ("num_items_in_batch is None: return loss.detach() / self.args.gradient_accumulation_steps" in source
            and "loss *= self.args.gradient_accumulation_steps" not in source):
        return gates.buggy("training_step divides a mean loss by GA only for logging, not before backward")
    return gates.unknown("training_step's gradient-accumulation scaling is neither the known buggy nor the fixed code")


def apply(module, patcher):
    from accelerate import accelerator as accelerate_module

    def note_mean_loss(wrapped, trainer, args, kwargs):
        accelerator = trainer.accelerator
        mean_loss = step_num_items(*args, **kwargs) is None
        setattr(accelerator, MEAN_LOSS_ARGS, trainer.args if mean_loss else None)
        try:
            return wrapped(*args, **kwargs)
        finally:
            setattr(accelerator, MEAN_LOSS_ARGS, None)

    def divide_mean_loss(wrapped, accelerator, args, kwargs):
        training_args = getattr(accelerator, MEAN_LOSS_ARGS, None)
        # Read at backward time: hf-partial-window-ga-divisor lowers it for a short last window.
        steps = training_args.gradient_accumulation_steps if training_args is not None else 0
        if steps > 1 and not uses_deepspeed(accelerator) and args:
            patcher.hit()
            return wrapped(args[0] / steps, *args[1:], **kwargs)
        return wrapped(*args, **kwargs)

    patcher.wrap(module.Trainer, "training_step", note_mean_loss)
    patcher.wrap(accelerate_module.Accelerator, "backward", divide_mean_loss)
