"""lf-mm-token-sum: LLaMA-Factory 0.9.3 and later average every micro-batch of a
multimodal (processor) SFT or PT run on its own.

When a processor is loaded, ``CustomSeq2SeqTrainer`` (SFT) and ``CustomTrainer`` (PT)
set ``model_accepts_loss_kwargs = False``: the model is no longer given the window's
``num_items_in_batch``, returns the mean over its own micro-batch, and ``Trainer``
divides that by GA. The update is a mean of micro-batch means (and of rank means), so
a micro-batch with few target tokens weighs as much as a long one. A text-only run of
the same release normalises by the target tokens of the whole window instead.

The fix gives such a trainer the text-only semantics through transformers' own
``compute_loss_func`` hook: the loss of a micro-batch is its token-summed
cross-entropy (logits against labels shifted by one, as the causal-LM loss does)
divided by the window's ``num_items_in_batch``. ``Trainer`` then counts the window's
target tokens (over all ranks with ``average_tokens_across_devices``), does not
divide by GA again, and undoes DDP's rank average, exactly as for a text-only run.
The model itself is still called without loss keyword arguments, which is what
LLaMA-Factory turned them off for.

Left alone, and reported: a loss chosen by the run (DFT, EAFT, ASFT or any other
``compute_loss_func``), label smoothing, and transformers releases without
``compute_loss_func`` (before 4.46).
"""

from gradfix import gates, hooks, report
from gradfix.fixes._code import method_source

TARGET = "llamafactory.train.sft.trainer"
PRETRAINING = "llamafactory.train.pt.trainer"  # CustomTrainer: the same code, patched on its import
HITS = "micro-batch losses normalised by the window's target tokens"
UNREACHED = "no multimodal (processor) SFT or PT trainer was built"
FINGERPRINT = ("if processor is not None:", "self.model_accepts_loss_kwargs = False")
CLASSES = {TARGET: "CustomSeq2SeqTrainer", PRETRAINING: "CustomTrainer"}


def _probe_class(module, name):
    source = method_source(getattr(module, name, None), "__init__")
    if isinstance(source, gates.Probe):
        return source
    if all(part in source for part in FINGERPRINT):
        return gates.buggy(f"{name} turns model_accepts_loss_kwargs off when a processor is loaded")
    return gates.unknown(f"{name}.__init__ no longer turns model_accepts_loss_kwargs off for a processor")


def probe(module):
    return _probe_class(module, CLASSES[TARGET])


def token_sum_loss(outputs, labels, num_items_in_batch=None):
    """The causal-LM loss of transformers' text models: the cross-entropy of each
    position against the next label, summed and divided by ``num_items_in_batch``
    (a plain mean where no count is given, as in evaluation)."""
    import torch.nn.functional as F

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    logits = logits.float()
    next_labels = F.pad(labels, (0, 1), value=-100)[..., 1:].to(logits.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), next_labels.reshape(-1),
                           ignore_index=-100, reduction=reduction)
    if num_items_in_batch is not None:
        if hasattr(num_items_in_batch, "to"):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def _ranks_factor(trainer):
    """The factor a text-only run's loss gets for the rank average that DDP applies:
    transformers before 4.49 multiplies only for models that take loss keyword
    arguments, not for a ``compute_loss_func`` (unless hf-dp-token-average turned the
    option on, which multiplies itself)."""
    from gradfix.fixes.transformers import dp_token_average

    args = trainer.args
    if not getattr(args, "average_tokens_across_devices", False) or vars(args).get(dp_token_average.TURNED_ON):
        return None
    import transformers

    if dp_token_average._multiplies_custom_loss(transformers.Trainer.compute_loss):
        return None
    return trainer.accelerator.num_processes


def _why_left_alone(trainer, processor):
    if processor is None or getattr(trainer, "model_accepts_loss_kwargs", True):
        return ""  # a text-only run: nothing to fix
    if not hasattr(trainer, "compute_loss_func"):
        return ("this transformers release has no compute_loss_func (added in 4.46), so gradfix cannot give the "
                "micro-batches a window-wide normaliser; upgrade transformers")
    if trainer.compute_loss_func is not None:
        return "the run chose its own loss (DFT, EAFT, ASFT or a custom compute_loss_func), which gradfix keeps"
    if getattr(trainer, "label_smoother", None) is not None:
        return "label smoothing is on, and gradfix keeps Trainer's label-smoothed loss"
    return None


def _install(module, patcher, class_name):
    cls = getattr(module, class_name)

    def normalise_over_window(wrapped, trainer, args, kwargs):
        result = wrapped(*args, **kwargs)
        processor = kwargs.get("processor", args[1] if len(args) > 1 else None)
        try:  # inside the user's trainer construction: never raise into it
            _give_window_loss(trainer, processor)
        except Exception as exc:
            report.warning(f"gradfix: lf-mm-token-sum could not install its loss ({exc!r}); each micro-batch "
                           "of this multimodal run keeps LLaMA-Factory's own mean")
        return result

    def _give_window_loss(trainer, processor):
        why = _why_left_alone(trainer, processor)
        if why:
            report.info_once(f"gradfix: lf-mm-token-sum: left alone: {why}; each micro-batch of this "
                         "multimodal run keeps LLaMA-Factory's own mean")
        if why is not None:
            return
        factor = _ranks_factor(trainer)

        def loss_over_window(outputs, labels, num_items_in_batch=None):
            loss = token_sum_loss(outputs, labels, num_items_in_batch)
            if num_items_in_batch is not None:
                patcher.hit()
                if factor:
                    loss = loss * factor
            return loss

        trainer.compute_loss_func = loss_over_window
        report.info_once(f"gradfix: lf-mm-token-sum: {class_name} of a multimodal run normalises each "
                     "micro-batch by the target tokens of the whole optimizer window, as a text-only run does")

    patcher.wrap(cls, "__init__", normalise_over_window)


def _install_pretraining(module, patcher):
    """Runs inside the user's import of the PT trainer: never raises into it."""
    try:
        if not patcher.locations:  # reverted before the PT trainer was imported
            return
        verdict = _probe_class(module, CLASSES[PRETRAINING])
        if verdict.verdict != gates.CodeVerdict.BUGGY:
            report.warning(f"gradfix: lf-mm-token-sum: CustomTrainer (PT) left alone: {verdict.detail}")
            return
        _install(module, patcher, CLASSES[PRETRAINING])
    except Exception as exc:
        report.warning(f"gradfix: lf-mm-token-sum could not patch the PT trainer ({exc!r}); multimodal PT runs "
                       "keep LLaMA-Factory's per-micro-batch mean")


def apply(module, patcher):
    _install(module, patcher, CLASSES[TARGET])
    hooks.when_imported(PRETRAINING, lambda pretraining: _install_pretraining(pretraining, patcher))
