"""Token-level loss over the whole optimizer window, for OpenRLHF trainers whose
loop normalises each micro-batch's loss by its own token count.

DeepSpeed divides every micro-batch loss by the accumulation count (GA) and
averages gradients over the data-parallel ranks. The window's loss is one token
mean over every response token of every micro-batch of every rank when each
micro-batch loss is ``masked_sum * dp / (N / GA)``, N being the window's token
count (OpenRLHF 0.10.4 and later compute exactly this).

N must be known before the first backward of the window. ``WindowedLoader``
stands in for the trainer's dataloader during ``fit``: it reads ahead to the end
of the current DeepSpeed accumulation window (crossing into the next epoch when a
window spans the boundary, as DeepSpeed's does), all-reduces the window's token and
sample counts over the data-parallel group once, and hands the counts of the
micro-batch it yields to the loss through ``pending``. It yields the same
batches in the same order: samples, steps and the schedule are unchanged.

``pending`` is a queue, not a slot: OpenRLHF 0.10.4+ buffers a window of batches
before training the first, and the losses come in the order the batches were
yielded. Evaluation inside ``fit`` pauses it (``evaluating``).
"""

import collections
import threading
from itertools import islice

from gradfix import report


class Pending(threading.local):
    """Counts of yielded, not yet trained micro-batches, in yield order (one queue
    per thread and per kind of trainer)."""

    def __init__(self):
        self.queue = collections.deque()  # WindowCounts of yielded, not yet trained micro-batches
        self.evaluating = False


pending = Pending()  # the SFT trainers'


class WindowCounts:
    """Normalisers of one optimizer window, as OpenRLHF 0.10.4 passes them to its
    loss: tokens and non-empty sequences of the whole window (all ranks) / GA."""

    __slots__ = ("dp_size", "batch_num_tokens", "global_batch_size", "mask_shape")

    def __init__(self, dp_size, batch_num_tokens, global_batch_size, mask_shape):
        self.dp_size, self.batch_num_tokens, self.global_batch_size = dp_size, batch_num_tokens, global_batch_size
        # Of the one micro-batch, to check the loss sees its mask. A shape, not a token count:
        # reading a count back to the host would stall the device once per micro-batch.
        self.mask_shape = mask_shape


class Plan:
    """What a window needs from the run: GA and the DeepSpeed engine's micro-step
    counter (to align windows with DeepSpeed's), the data-parallel group, where
    the counts live, and how to read a batch's loss mask."""

    def __init__(self, engine, accumulation, dp_group, dp_size, device, loss_mask_of, patcher):
        self.engine, self.accumulation = engine, accumulation
        self.dp_group, self.dp_size, self.device = dp_group, dp_size, device
        self.loss_mask_of, self.patcher = loss_mask_of, patcher

    def micro_steps_done(self):
        """DeepSpeed's micro-step count (0 for an engine without one)."""
        steps = getattr(self.engine, "micro_steps", 0)
        return steps if isinstance(steps, int) else 0

    def counts(self, batches):
        """One all-reduce per window: [tokens, non-empty sequences] over the DP group."""
        import torch
        import torch.distributed as dist

        masks = [self.loss_mask_of(batch) for batch in batches]
        totals = torch.zeros(2, dtype=torch.float32, device=self.device)
        for mask in masks:
            mask = mask.to(device=self.device, dtype=torch.float32)
            totals[0] += mask.sum()
            totals[1] += (mask.reshape(mask.shape[0], -1).sum(dim=-1) > 0).sum()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=self.dp_group)
        tokens, sequences = totals[0] / self.accumulation, totals[1] / self.accumulation
        self.patcher.hit()
        return [WindowCounts(self.dp_size, tokens, sequences, tuple(mask.shape)) for mask in masks]


class WindowedLoader:
    """The trainer's dataloader, read a window ahead. Attribute access (sampler,
    len) goes to the real one. ``epochs`` is the trainer's epoch count: a window
    that the last batches of an epoch leave open is completed from the next epoch
    when there is one (the sampler's ``epoch`` says where we are)."""

    def __init__(self, loader, plan, epochs):
        self._loader, self._plan, self._epochs = loader, plan, epochs
        self._carried = None  # (iterator, [(batch, counts)]) read ahead from the next epoch
        # Micro-steps into DeepSpeed's run: its count when fit started plus what we
        # yielded (not its live count: 0.10.4+ reads a window ahead of training).
        self._position = plan.micro_steps_done()

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        iterator, window = self._carried or (iter(self._loader), [])
        self._carried = None
        while True:
            window = window or self._next_window(iterator)
            if not window:
                return
            for batch, counts in window:
                pending.queue.append(counts)
                self._position += 1
                yield batch
            window = []
            if self._carried is not None:  # the rest of this window is in the next epoch
                return

    def _next_window(self, iterator):
        wanted = self._plan.accumulation - self._position % self._plan.accumulation
        batches = list(islice(iterator, wanted))
        if not batches:
            return []
        carried, following = [], None
        if len(batches) < wanted and self._has_next_epoch():
            following = self._next_epoch_iterator()
            carried = list(islice(following, wanted - len(batches)))
        counts = self._plan.counts(batches + carried)
        if carried:
            self._carried = (following, list(zip(carried, counts[len(batches):])))
        return list(zip(batches, counts[:len(batches)]))

    def _has_next_epoch(self):
        epoch = getattr(getattr(self._loader, "sampler", None), "epoch", None)
        return isinstance(epoch, int) and epoch + 1 < self._epochs

    def _next_epoch_iterator(self):
        """Start the next epoch's iteration now, exactly as the trainer's loop will
        (its own ``set_epoch`` call then repeats ours and changes nothing)."""
        sampler = self._loader.sampler
        try:
            sampler.set_epoch(sampler.epoch + 1, consumed_samples=0)
        except TypeError:  # a sampler without OpenRLHF's resume argument
            sampler.set_epoch(sampler.epoch + 1)
        return iter(self._loader)


def take_pending(loss_mask, waiting=pending):
    """The counts for this loss call, or None when it is not the training loss of a
    yielded micro-batch (evaluation, another trainer, or a mask that differs)."""
    if waiting.evaluating or not waiting.queue:
        return None
    counts = waiting.queue.popleft()
    if tuple(loss_mask.shape) != counts.mask_shape:
        report.warning("gradfix: an OpenRLHF loss saw a different loss mask than the micro-batch the "
                       "dataloader yielded; this micro-batch keeps OpenRLHF's own normalisation")
        return None
    return counts


def data_parallel(strategy):
    """(group, size) of the data-parallel ranks, as OpenRLHF 0.10.4 finds them, or
    None when this run's layout cannot be handled (ring attention without a device
    mesh)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None, 1
    mesh = getattr(strategy, "ds_device_mesh", None)
    if mesh is not None:
        group = mesh["dp"].get_group()
        return group, dist.get_world_size(group=group)
    if getattr(strategy, "ring_attn_size", 1) != 1:
        return None
    return None, dist.get_world_size()
