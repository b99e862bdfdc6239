"""hf-loss-without-count-not-divided: ``Trainer`` never divides a loss that came without
``num_items_in_batch`` by gradient_accumulation_steps when the model takes loss keyword
arguments (transformers 4.48.1 to 4.52.x).

4.48.1 divides the loss before backward only when the model takes no loss keyword
arguments, on the assumption that such a model divided its token sum by the window's
count itself. A loss computed without that count is a micro-batch mean: a batch without
"labels" (TRL <= 0.13 DPO, KTO, BCO, CPO and ORPO, TRL < 0.20 ORPO, reward models) or
any compute_loss that ignores the count. Its gradient is then the SUM of the window's
micro-batch means, GA times too large; the logged loss is GA times too large as well.
Under DeepSpeed, 4.48.x still let the engine divide by GA (right for these losses);
4.49.0 to 4.52.x turn that division off too. 4.53.0 divides whenever the count is None.

The fix wraps ``Trainer.training_step`` to note such a micro-batch, and
``Accelerator.backward`` to divide its loss by GA unless DeepSpeed is about to; the
step then returns the divided value for the log, as 4.53.0 does.
"""

from gradfix import gates
from gradfix.fixes._code import method_source
from gradfix.fixes.transformers._step import step_num_items, uses_deepspeed

TARGET = "transformers.trainer"
HITS = "losses without num_items_in_batch divided by gradient_accumulation_steps"
UNREACHED = ("no Trainer step had a loss without num_items_in_batch from a model that takes loss keyword "
             "arguments, with GA > 1")
PENDING = "_gradfix_countless_loss"  # on the accelerator, for one training step

BUGGY = ("if not self.model_accepts_loss_kwargs and self.compute_loss_func is None: "
         "loss = loss / self.args.gradient_accumulation_steps")
FIXED = ("or num_items_in_batch is None) and self.compute_loss_func is None: "
         "loss = loss / self.args.gradient_accumulation_steps")
FIXED_4_48_0 = "if num_items_in_batch is None: loss = loss / self.args.gradient_accumulation_steps"


def probe(module):
    source = method_source(getattr(module, "Trainer", None), "training_step")
    if isinstance(source, gates.Probe):
        return source
    if FIXED in source or FIXED_4_48_0 in source:
        return gates.fixed("training_step divides every loss without num_items_in_batch by GA")
    if BUGGY in source:
        return gates.buggy("training_step divides a loss by GA only when the model takes no loss keyword arguments")
    return gates.unknown("training_step's gradient-accumulation scaling is neither the known buggy nor the fixed code")


def _needs_division(trainer, num_items_in_batch):
    """4.53.0's condition, less the part 4.48.1 already handles (a model without loss
    keyword arguments)."""
    return (num_items_in_batch is None and trainer.model_accepts_loss_kwargs
            and getattr(trainer, "compute_loss_func", None) is None
            and not getattr(trainer, "use_apex", False) and trainer.args.gradient_accumulation_steps > 1)


def _deepspeed_divides(accelerator, kwargs):
    return uses_deepspeed(accelerator) and kwargs.get("scale_wrt_gas", True)


def apply(module, patcher):
    from accelerate import accelerator as accelerate_module

    def note_countless_loss(wrapped, trainer, args, kwargs):
        if not _needs_division(trainer, step_num_items(*args, **kwargs)):
            return wrapped(*args, **kwargs)
        accelerator = trainer.accelerator
        pending = {"args": trainer.args, "divisor": None}
        setattr(accelerator, PENDING, pending)
        try:
            loss = wrapped(*args, **kwargs)
        finally:
            setattr(accelerator, PENDING, None)
        # The logged value: 4.53.0 returns the divided loss (under DeepSpeed as well).
        return loss / pending["divisor"] if pending["divisor"] else loss

    def divide_countless_loss(wrapped, accelerator, args, kwargs):
        pending = getattr(accelerator, PENDING, None)
        if not pending or not args:
            return wrapped(*args, **kwargs)
        # Read at backward time: hf-partial-window-ga-divisor lowers it for a short last window.
        steps = pending["divisor"] = pending["args"].gradient_accumulation_steps
        patcher.hit()
        if _deepspeed_divides(accelerator, kwargs):
            return wrapped(*args, **kwargs)  # 4.48.x under DeepSpeed: the engine divides by GA
        return wrapped(args[0] / steps, *args[1:], **kwargs)

    patcher.wrap(module.Trainer, "training_step", note_countless_loss)
    patcher.wrap(accelerate_module.Accelerator, "backward", divide_countless_loss)
