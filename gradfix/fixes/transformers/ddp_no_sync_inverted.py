"""hf-ddp-no-sync-inverted: transformers 4.46.2 synchronises DDP gradients on the
wrong micro-batches of a gradient-accumulation window.

4.46.2's training loop enters ``accelerator.no_sync(model)`` for the LAST micro-batch
of every window and for none of the others (the condition is inverted; 4.46.3 has
``i != len(batch_samples) - 1``). So every micro-batch except the last is averaged
over the ranks and the last stays local: the ranks step with different gradients
and their weights drift apart. With gradient_accumulation_steps = 1 nothing is ever
synchronised.

The fix wraps ``Trainer.training_step``: for a ``DistributedDataParallel`` model it
sets DDP's own switch (``require_backward_grad_sync``, what ``no_sync`` toggles)
from the accelerator's ``sync_gradients``, which the loop has just set correctly
for this micro-batch, and restores it afterwards. Synchronising only the last
micro-batch of each window is what 4.46.3 does.
"""

from gradfix import gates
from gradfix.fixes._code import method_source

TARGET = "transformers.trainer"
HITS = "micro-batch gradient synchronisations (DDP all-reduce switched on or off)"
UNREACHED = "no DistributedDataParallel training step ran (one process, or DeepSpeed/FSDP)"
BUGGY = "if i == len(batch_samples) - 1"
FIXED = "if i != len(batch_samples) - 1"


def probe(module):
    cls = getattr(module, "Trainer", None)
    if cls is None or "training_step" not in vars(cls):
        return gates.unknown("Trainer.training_step is missing")
    source = method_source(cls, "_inner_training_loop")
    if isinstance(source, gates.Probe):
        return source
    if "no_sync, model=model" not in source:
        return gates.unknown("the training loop no longer enters accelerator.no_sync itself")
    if f"{BUGGY} else contextlib.nullcontext" in source:
        return gates.buggy("the training loop enters no_sync for the last micro-batch of a window only")
    if FIXED in source:
        return gates.fixed("no_sync for every micro-batch but the last")
    return gates.unknown("the no_sync condition of the training loop is neither the known buggy nor the fixed one")


def apply(module, patcher):
    from torch.nn.parallel import DistributedDataParallel

    def sync_last_micro_batch(wrapped, trainer, args, kwargs):
        model = args[0] if args else kwargs.get("model")
        if not isinstance(model, DistributedDataParallel) or trainer.accelerator.num_processes < 2:
            return wrapped(*args, **kwargs)  # one process: nothing to synchronise
        entered = model.require_backward_grad_sync
        wanted = bool(trainer.accelerator.sync_gradients)  # the loop set it for this micro-batch
        if entered == wanted:
            return wrapped(*args, **kwargs)
        patcher.hit()
        model.require_backward_grad_sync = wanted
        try:
            return wrapped(*args, **kwargs)
        finally:
            model.require_backward_grad_sync = entered  # no_sync's exit restores its own value after this

    patcher.wrap(module.Trainer, "training_step", sync_last_micro_batch)
