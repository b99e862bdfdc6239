"""What the OpenRLHF SFT fixes share: the code gate's reading of ``SFTTrainer.fit``
and ``SFTLoss``, and the wrapping of both.

``fit`` gets the window read-ahead (``_window.WindowedLoader``) in place of its
dataloader while it runs; ``SFTLoss.forward`` gets the window's counts for the
micro-batch being trained; ``evaluate`` is left alone. The patches differ in the
code their gate recognises and in how the loss is computed from the counts
(``loss_with_counts``): by gradfix for 0.7.0-0.10.2, by OpenRLHF's own loss with
the window's normalisers from 0.10.3 on.
"""

from gradfix import gates, report

from . import _window

TARGET = "openrlhf.trainer.sft_trainer"
REPLACES = ("SFTTrainer.fit", "SFTTrainer.evaluate", "SFTLoss.forward")  # what apply_with wraps
HITS = "optimizer windows (loss normalised by the window's token count)"
UNREACHED = "no OpenRLHF SFT training step ran"

# The fixed releases (0.10.4+) normalise in fit itself with this helper.
FIXED_MARK = "iter_grad_accum_global_norm"
LOOP_MARK = "in self.train_dataloader:"


def fit_source(module, loss_class="SFTLoss"):
    """(SFTTrainer, the loss class, source of SFTTrainer.fit) or a gates.unknown Probe."""
    import inspect  # here: importing gradfix stays light

    trainer, loss = getattr(module, "SFTTrainer", None), getattr(module, loss_class, None)
    if not (isinstance(trainer, type) and isinstance(loss, type) and "fit" in vars(trainer)
            and "forward" in vars(loss)):
        return gates.unknown(f"SFTTrainer.fit or {loss_class}.forward is missing")
    try:
        source = inspect.getsource(vars(trainer)["fit"])
    except (OSError, TypeError) as exc:
        return gates.unknown(f"the source of SFTTrainer.fit cannot be read ({exc})")
    return trainer, loss, source


def loss_parameters(loss):
    import inspect

    return list(inspect.signature(vars(loss)["forward"]).parameters)[1:]


def microbatch_loss_value(loss, **counts):
    """SFTLoss on a stand-in micro-batch: -log p = [1, 3], both tokens in the loss."""
    import torch

    return float(loss()(torch.tensor([[-1.0, -3.0]]), torch.tensor([[1, 1]]), **counts))


def probe_with(module, marks, loss_signature, counts, expected, what, fixed_marks=(FIXED_MARK,)):
    """Buggy when fit's source has every one of ``marks`` and the loss has
    ``loss_signature`` and gives ``expected`` on the stand-in; fixed when it has
    one of ``fixed_marks`` (the fixed releases' own window normalisation)."""
    found = fit_source(module)
    if isinstance(found, gates.Probe):
        return found
    _, loss, source = found
    if any(mark in source for mark in fixed_marks):
        return gates.fixed()
    if not all(mark in source for mark in marks):
        return gates.unknown("SFTTrainer.fit does not compute its loss as expected for this release")
    parameters = loss_parameters(loss)
    if parameters != loss_signature:
        return gates.unknown(f"SFTLoss.forward takes {parameters}, expected {loss_signature}")
    try:
        value = microbatch_loss_value(loss, **counts)
    except Exception as exc:
        return gates.unknown(f"SFTLoss failed on the probe: {type(exc).__name__}: {exc}")
    if value != expected:
        return gates.unknown(f"SFTLoss gave {value} on the probe (expected {expected})")
    return gates.buggy(what)


NORMALISER_SIGNATURE = ["per_token_logps", "loss_mask", "dp_size", "batch_num_tokens", "global_batch_size"]


def window_normalisers(wrapped, loss_module, per_token_logps, loss_mask, counts):
    """For an SFTLoss that takes the normalisers (0.10.3+): pass the window's."""
    return wrapped(per_token_logps, loss_mask, dp_size=counts.dp_size, batch_num_tokens=counts.batch_num_tokens,
                   global_batch_size=counts.global_batch_size)


def trainer_plan(trainer, patcher):
    """The window plan for this trainer's run, or None (with a warning) when the
    run's layout is outside what the fix handles."""
    engine = getattr(getattr(trainer, "model", None), "model", None)
    steps = getattr(engine, "gradient_accumulation_steps", None)
    layout = _window.data_parallel(trainer.strategy)
    if not callable(steps) or layout is None:
        report.warning("gradfix: OpenRLHF SFT is not corrected in this run: "
                       + ("ring attention without a device mesh" if layout is None else
                          "the trainer's model is not a DeepSpeed engine"))
        return None
    group, size = layout
    device = next(trainer.model.parameters()).device
    return _window.Plan(engine, int(steps()), group, size, device, shifted_loss_mask, patcher)


def shifted_loss_mask(batch):
    """The mask the SFT loss reduces over: the loop passes ``loss_mask[:, :-1]``."""
    return batch[2].squeeze(1)[:, :-1]


def apply_with(module, patcher, loss_with_counts):
    """Wrap fit (window read-ahead) and SFTLoss.forward (``loss_with_counts(wrapped,
    loss_module, per_token_logps, loss_mask, counts)``)."""

    def windowed_fit(wrapped, trainer, args, kwargs):
        plan = trainer_plan(trainer, patcher)
        if plan is None:
            return wrapped(*args, **kwargs)
        loader = trainer.train_dataloader
        trainer.train_dataloader = _window.WindowedLoader(loader, plan, trainer.epochs)
        try:
            return wrapped(*args, **kwargs)
        finally:  # counts of micro-batches never trained (an error, a break) must not leak
            trainer.train_dataloader = loader
            _window.pending.queue.clear()

    def evaluation_untouched(wrapped, trainer, args, kwargs):
        _window.pending.evaluating = True
        try:
            return wrapped(*args, **kwargs)
        finally:
            _window.pending.evaluating = False

    def window_loss(wrapped, loss_module, args, kwargs):
        if len(args) < 2:
            return wrapped(*args, **kwargs)
        counts = _window.take_pending(args[1])
        if counts is None:
            return wrapped(*args, **kwargs)
        return loss_with_counts(wrapped, loss_module, args[0], args[1], counts)

    trainer, loss = module.SFTTrainer, module.SFTLoss  # the probe checked both
    patcher.wrap(trainer, "fit", windowed_fit)
    patcher.wrap(loss, "forward", window_loss)
    if "evaluate" in vars(trainer):  # its losses are plain per-batch means, as upstream keeps them
        patcher.wrap(trainer, "evaluate", evaluation_untouched)
