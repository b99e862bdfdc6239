"""hf-dp-token-average: with several data-parallel ranks, ``Trainer`` normalises each
rank's loss by that rank's own token count (transformers 4.46.2 to 4.53.x).

Each rank divides its token-summed loss by its local ``num_items_in_batch`` and DDP
then averages the ranks equally: a mean of per-rank means, so the rank that holds
the shorter sequences dominates the gradient. ``average_tokens_across_devices=True``
makes the count global (gathered over the ranks) and multiplies the loss by the
number of ranks to undo DDP's average. 4.54.0 made True the default; here it
defaults to False.

The fix gives these releases 4.54.0's default: when the option was not chosen
explicitly it starts as True, and ``TrainingArguments.__post_init__`` turns it off
again for a single process, as 4.54.0 does. An explicit ``False`` (a keyword
argument, a key of a YAML/JSON config, or ``--average_tokens_across_devices`` on the
command line of an ``HfArgumentParser`` script) is kept and reported.

Releases before 4.49.0 multiply the loss by the number of ranks only when the model
takes loss keyword arguments, not for a ``compute_loss_func`` with a model that does
not; 4.47.x-4.48.x still pass it the global count. Where gradfix turned the option on,
it multiplies in that case too, as 4.49.0 and later do, so that the loss keeps its
scale.
"""

import sys
import weakref

from gradfix import gates, hooks, report
from gradfix.fixes._code import flat_source

TARGET = "transformers.training_args"
OPTION = "average_tokens_across_devices"
CHOICE = "_gradfix_token_average_choice"  # "explicit" or "default", set when the arguments are built
TURNED_ON = "_gradfix_token_average_on"  # True where gradfix turned the option on for several ranks
HITS = "TrainingArguments for several data-parallel ranks (now averaging tokens across them)"
UNREACHED = "no TrainingArguments with the default setting were built for several data-parallel ranks"

_watching = weakref.WeakSet()  # patchers whose Trainer.compute_loss check is registered


def probe(module):
    cls = getattr(module, "TrainingArguments", None)
    field = getattr(cls, "__dataclass_fields__", {}).get(OPTION)
    if field is None or "__post_init__" not in vars(cls):
        return gates.unknown(f"TrainingArguments has no {OPTION} option")
    if field.default is True:
        return gates.fixed(f"{OPTION} defaults to True")
    if field.default is False:
        return gates.buggy(f"{OPTION} defaults to False: each rank normalises by its own token count")
    return gates.unknown(f"{OPTION} defaults to {field.default!r}")


def _on_command_line(argv):
    spellings = ("--" + OPTION, "--" + OPTION.replace("_", "-"))
    return any(arg.split("=", 1)[0] in spellings for arg in argv)


def chosen_explicitly(cls, kwargs, argv=None):
    """Whether the caller of ``cls(**kwargs)`` chose the option. ``HfArgumentParser``
    passes every field, defaults included: there only the command line tells."""
    import dataclasses

    if OPTION not in kwargs:
        return False
    every_field = all(f.name in kwargs for f in dataclasses.fields(cls) if f.init)
    return not every_field or _on_command_line(sys.argv[1:] if argv is None else argv)


def apply(module, patcher):
    cls = module.TrainingArguments

    def remember_choice(subclass, *args, **kwargs):
        arguments = object.__new__(subclass)
        try:
            explicit = chosen_explicitly(subclass, kwargs)
        except TypeError:  # not a dataclass after all: leave its arguments alone
            return arguments
        arguments.__dict__[CHOICE] = "explicit" if explicit else "default"
        return arguments

    def default_to_all_ranks(wrapped, arguments, args, kwargs):
        choice = vars(arguments).get(CHOICE)  # absent on copies and unpickled arguments: left alone
        turn_on = choice == "default" and getattr(arguments, OPTION, None) is False
        if choice == "explicit" and getattr(arguments, OPTION, None) is False:
            report.info_once(f"gradfix: hf-dp-token-average: {OPTION}=False was chosen explicitly and is "
                         "kept: with several data-parallel ranks each rank normalises the loss by its own "
                         "token count")
        if turn_on:
            setattr(arguments, OPTION, True)
        result = wrapped(*args, **kwargs)
        if turn_on and getattr(arguments, OPTION) is True:  # __post_init__ keeps it only for several ranks
            arguments.__dict__[TURNED_ON] = True
            patcher.hit()
            _watch_trainer(patcher)
            report.info_once(f"gradfix: hf-dp-token-average: {OPTION}=True (the default from transformers "
                         "4.54.0): the loss is normalised by the token count of all data-parallel ranks")
        return result

    patcher.define(cls, "__new__", staticmethod(remember_choice))
    patcher.wrap(cls, "__post_init__", default_to_all_ranks)


def _watch_trainer(patcher):
    """Once gradfix has turned the option on: patch ``Trainer.compute_loss`` where it
    needs it, now or when ``transformers.trainer`` is imported. (Not at the import of
    training_args: that happens while transformers.trainer itself is importing.)"""
    if patcher in _watching:
        return
    _watching.add(patcher)
    hooks.when_imported("transformers.trainer", lambda trainer: _scale_custom_loss_safely(trainer, patcher))


def _scale_custom_loss_safely(trainer_module, patcher):
    """Runs inside the user's TrainingArguments(...) or import: never raises into it."""
    try:
        _scale_custom_loss(trainer_module, patcher)
    except Exception as exc:
        report.warning(f"gradfix: hf-dp-token-average could not patch Trainer.compute_loss ({exc!r}); a "
                       f"compute_loss_func with a model without loss keyword arguments may see its loss "
                       f"divided by the number of ranks. Set {OPTION} explicitly to avoid that")


def _multiplies_custom_loss(compute_loss) -> bool:
    """Whether ``Trainer.compute_loss`` multiplies by the number of ranks for a
    ``compute_loss_func`` as well (4.49.0 and later)."""
    return "self.model_accepts_loss_kwargs or self.compute_loss_func" in flat_source(compute_loss)


def _scale_custom_loss(trainer_module, patcher):
    """Before 4.49.0: multiply a ``compute_loss_func`` loss by the number of ranks where
    gradfix turned the option on (the count it divides by is global there)."""
    if not patcher.locations:  # the patch was reverted before the trainer was imported
        return
    cls = getattr(trainer_module, "Trainer", None)
    try:
        if _multiplies_custom_loss(cls.compute_loss):
            return
    except (AttributeError, OSError, TypeError) as exc:
        report.warning(f"gradfix: hf-dp-token-average cannot read Trainer.compute_loss ({exc}); a "
                       f"compute_loss_func with a model without loss keyword arguments may see its loss "
                       f"divided by the number of ranks. Set {OPTION} explicitly to avoid that")
        return

    def keep_scale(wrapped, trainer, args, kwargs):
        inputs = args[1] if len(args) > 1 else kwargs.get("inputs", {})
        custom = (vars(trainer.args).get(TURNED_ON) and trainer.compute_loss_func is not None
                  and not trainer.model_accepts_loss_kwargs and "labels" in inputs
                  and _num_items(*args, **kwargs) is not None)
        result = wrapped(*args, **kwargs)
        if not custom:
            return result
        ranks = trainer.accelerator.num_processes
        if isinstance(result, tuple):
            return (result[0] * ranks, *result[1:])
        return result * ranks

    patcher.wrap(cls, "compute_loss", keep_scale)


def _num_items(model, inputs, return_outputs=False, num_items_in_batch=None, *args, **kwargs):
    return num_items_in_batch
