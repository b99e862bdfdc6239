"""hf-partial-window-ga-divisor: the last accumulation window of an epoch, when it holds
fewer micro-batches than gradient_accumulation_steps, still has its micro-batch mean
losses divided by the full GA (transformers 4.46.2 to 4.54.x).

When the micro-batches of an epoch are not a multiple of GA, Trainer ends the epoch with
a short window of k < GA micro-batches. A loss that is already normalised for the window
(a token sum over num_items_in_batch) is right there, but a micro-batch mean loss is
divided by ``args.gradient_accumulation_steps``, so that optimizer step gets k/GA of
its gradient (0.75 with 3 of 4 micro-batches). 4.55.0 divides by the number of
micro-batches of the current window instead.

The fix wraps ``Trainer.get_batch_samples`` to note how many micro-batches the current
window holds, and ``Trainer.training_step`` to let ``args.gradient_accumulation_steps``
read that number for the duration of each step of a short window, which is what 4.55.0
divides by. Before 4.49.0 DeepSpeed's engine divides such a loss by its own GA instead;
there ``Accelerator.backward`` scales the loss by GA / (window's size) first. (Older
accelerate never steps the engine at the end of a short window at all: see
accelerate-deepspeed-short-window.)
"""

from gradfix import gates
from gradfix.fixes._code import method_source
from gradfix.fixes.transformers._step import uses_deepspeed
from gradfix.fixes.transformers.deepspeed_double_ga_scale import NORMALISED

TARGET = "transformers.trainer"
HITS = "micro-batches of a short last window run with the window's size as the GA that mean losses are divided by"
UNREACHED = "no epoch ended with a window shorter than gradient_accumulation_steps"
WINDOW = "_gradfix_window_batches"  # on the trainer: micro-batches of the current accumulation window
SHORT = "_gradfix_short_window"  # on the accelerator: (GA, window's size) during a step of a short window


def probe(module):
    trainer = getattr(module, "Trainer", None)
    step = method_source(trainer, "training_step")
    if isinstance(step, gates.Probe):
        return step
    if "current_gradient_accumulation_steps" in step:
        return gates.fixed("training_step divides by the current window's number of micro-batches")
    loop = method_source(trainer, "_inner_training_loop")
    if isinstance(loop, gates.Probe):
        return loop
    if "self.get_batch_samples(epoch_iterator, num_batches" not in loop or "remainder" not in loop:
        return gates.unknown("the training loop no longer fetches each window with get_batch_samples")
    if "/ self.args.gradient_accumulation_steps" not in step:
        return gates.unknown("training_step no longer divides by args.gradient_accumulation_steps")
    return gates.buggy("a short last window divides micro-batch mean losses by the full gradient_accumulation_steps")


def _window_size(samples):
    """The number of micro-batches get_batch_samples returned, or None if unreadable."""
    batches = samples[0] if isinstance(samples, tuple) and samples else None
    return len(batches) if isinstance(batches, list) else None


def _engine_divides(accelerator, kwargs):
    """DeepSpeed will divide this loss by its GA: no scale_wrt_gas=False from Trainer
    (4.49.0+) or from hf-deepspeed-double-ga-scale (which marks the step)."""
    return (uses_deepspeed(accelerator) and kwargs.get("scale_wrt_gas", True)
            and not getattr(accelerator, NORMALISED, False))


def apply(module, patcher):
    from accelerate import accelerator as accelerate_module

    def note_window(wrapped, trainer, args, kwargs):
        samples = wrapped(*args, **kwargs)
        setattr(trainer, WINDOW, _window_size(samples))
        return samples

    def divide_by_window(wrapped, trainer, args, kwargs):
        window, training_args = getattr(trainer, WINDOW, None), trainer.args
        steps = training_args.gradient_accumulation_steps
        if not window or window >= steps:
            return wrapped(*args, **kwargs)
        patcher.hit()
        training_args.gradient_accumulation_steps = window
        setattr(trainer.accelerator, SHORT, (steps, window))
        try:
            return wrapped(*args, **kwargs)
        finally:
            training_args.gradient_accumulation_steps = steps
            setattr(trainer.accelerator, SHORT, None)

    def rescale_for_engine(wrapped, accelerator, args, kwargs):
        short = getattr(accelerator, SHORT, None)
        if short and args and _engine_divides(accelerator, kwargs):
            steps, window = short
            return wrapped(args[0] * (steps / window), *args[1:], **kwargs)
        return wrapped(*args, **kwargs)

    patcher.wrap(module.Trainer, "get_batch_samples", note_window)
    patcher.wrap(module.Trainer, "training_step", divide_by_window)
    patcher.wrap(accelerate_module.Accelerator, "backward", rescale_for_engine)
