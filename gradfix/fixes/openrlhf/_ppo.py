"""What the OpenRLHF PPO fixes share: the code gate's reading of a PPO trainer
(``ActorPPOTrainer`` or ``CriticPPOTrainer``) and the window read-ahead of its
``ppo_train``.

OpenRLHF 0.10.4 gives every micro-batch of an optimizer window the window's
normalisers (``_window.WindowCounts``): GA micro-batches read ahead, counted, and
all-reduced over the data-parallel group, windows restarting at every epoch of
``ppo_train`` and a trailing short window kept. ``ppo_train`` builds its
dataloader from the module's ``DataLoader`` name; while a patched ``ppo_train``
runs, that name returns the loader wrapped in ``EpochWindows``, which yields the
same batches in the same order and queues each one's counts for its training
step. The fixes differ in how the step uses them (``_ppo_dp`` and
``_ppo_microbatch``).
"""

import threading
from itertools import islice

from gradfix import gates, report
from gradfix.fixes._code import method_source

from . import _window

FIXED_MARK = "iter_grad_accum_global_norm"  # 0.10.4+: ppo_train's own window normalisation
HITS = "optimizer windows (loss normalised by the window's token count)"


class Role:
    """One of the two PPO trainers: where it lives and what its names are."""

    def __init__(self, target, trainer, model, loss_attribute, loss_class, loss_call):
        self.target, self.trainer, self.model = target, trainer, model
        self.loss_attribute, self.loss_class, self.loss_call = loss_attribute, loss_class, loss_call
        self.unreached = f"no OpenRLHF PPO {model} training step ran"


ACTOR = Role("openrlhf.trainer.ray.ppo_actor", "ActorPPOTrainer", "actor", "actor_loss_fn", "PolicyLoss",
             "self.actor_loss_fn(")
CRITIC = Role("openrlhf.trainer.ray.ppo_critic", "CriticPPOTrainer", "critic", "critic_loss_fn", "ValueLoss",
              "self.critic_loss_fn(")

pending = _window.Pending()  # counts of yielded, not yet trained PPO micro-batches (this thread)
_running = threading.local()  # .plan: the window plan of the ppo_train running in this thread
_warned = set()  # (trainer, reason) already told: ppo_train runs once per rollout


class EpochWindows:
    """A ``ppo_train`` dataloader read one window (GA micro-batches) ahead, as
    OpenRLHF 0.10.4 reads it: every iteration (epoch) starts a new window."""

    def __init__(self, loader, plan):
        self._loader, self._plan = loader, plan

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        iterator = iter(self._loader)
        while True:
            window = list(islice(iterator, self._plan.accumulation))
            if not window:
                return
            for batch, counts in zip(window, self._plan.counts(window)):
                pending.queue.append(counts)
                yield batch


def action_mask(experience):
    return experience.action_mask


def dynamic_batching(args) -> bool:
    """OpenRLHF's dynamic batching switch, under its 0.8.x-0.9.x or 0.10.x name."""
    train = getattr(args, "train", None)
    return bool(getattr(args, "use_dynamic_batch", False) or getattr(train, "dynamic_batch_enable", False))


def ppo_plan(trainer, role, patcher):
    """The window plan of this ``ppo_train`` call, or None (with the reason) when the
    run's layout is outside what the fix handles."""
    strategy = trainer.strategy
    layout = _window.data_parallel(strategy)
    model = getattr(trainer, role.model, None)
    accumulation = getattr(strategy, "accumulated_gradient", None)
    if layout is None:
        return None, "ring attention without a device mesh"
    if not isinstance(accumulation, int) or model is None:
        return None, "the trainer has no DeepSpeed accumulation count or model"
    group, size = layout
    device = next(model.parameters()).device
    return _window.Plan(getattr(model, "model", None), max(accumulation, 1), group, size, device, action_mask,
                        patcher), None


def source_marks(module, role, ppo_train_marks, training_step_marks):
    """None when the trainer's code has every mark, else the gate's verdict: fixed
    for 0.10.4's own normalisation, unknown for code this fix was not written for."""
    trainer = getattr(module, role.trainer, None)
    ppo_train = method_source(trainer, "ppo_train")
    if isinstance(ppo_train, gates.Probe):
        return ppo_train
    if FIXED_MARK in ppo_train:
        return gates.fixed()
    training_step = method_source(trainer, "training_step")
    if isinstance(training_step, gates.Probe):
        return training_step
    if not isinstance(vars(module).get("DataLoader"), type):
        return gates.unknown(f"{role.target} has no module-level DataLoader for ppo_train")
    missing = [mark for mark in ppo_train_marks if mark not in ppo_train]
    missing += [mark for mark in training_step_marks if mark not in training_step]
    if missing:
        return gates.unknown(f"{role.trainer} does not train as expected for this release (no {missing[0]!r})")
    return None


def apply_with(module, role, patcher, supported, train_step=None, names=None):
    """Wrap ``ppo_train`` (windows while it runs) and the module's ``DataLoader``;
    ``train_step`` wraps ``training_step``, ``names`` wraps module-level helpers
    ({name: wrapper}). ``supported(trainer)`` returns None, or why this run is
    left to OpenRLHF (warned once; "" for a run that is right as it is)."""
    trainer_class = getattr(module, role.trainer)

    def windowed_ppo_train(wrapped, trainer, args, kwargs):
        reason = supported(trainer)
        plan = None
        if reason is None:
            plan, reason = ppo_plan(trainer, role, patcher)
        if plan is None:
            if reason and (role.trainer, reason) not in _warned:
                _warned.add((role.trainer, reason))
                report.warning(f"gradfix: OpenRLHF PPO {role.model} is not corrected in this run: {reason}")
            return wrapped(*args, **kwargs)
        _running.plan = plan
        try:
            return wrapped(*args, **kwargs)
        finally:  # counts of micro-batches never trained (an error, a break) must not leak
            _running.plan = None
            pending.queue.clear()

    def windowed_loader(wrapped, instance, args, kwargs):
        loader = wrapped(*args, **kwargs)
        plan = getattr(_running, "plan", None)
        return loader if plan is None else EpochWindows(loader, plan)

    patcher.wrap(trainer_class, "ppo_train", windowed_ppo_train)
    patcher.wrap(module, "DataLoader", windowed_loader)
    if train_step is not None:
        patcher.wrap(trainer_class, "training_step", train_step)
    for name, wrapper in (names or {}).items():
        patcher.wrap(module, name, wrapper)
