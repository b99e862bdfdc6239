"""trl-grpo-window-normaliser: GRPO's token-count losses (dapo, cispo, vespo) divide
each micro-batch by the token count of the whole generation batch, not of one
optimizer window (TRL 0.22.0 to 1.9.0).

``num_items_in_batch`` counts the completion tokens of a generation batch, which
spans ``steps_per_generation`` micro-batches; an optimizer window spans
``gradient_accumulation_steps`` of them. When the two differ, every step's loss,
gradient and update are scaled by GA / steps_per_generation (half the update with
steps_per_generation 4 and GA 2). 1.9.1 rescales the count to one window:
count x GA / steps_per_generation, in training only. The fix hands ``_compute_loss``
exactly that count.
"""

from gradfix import gates

from gradfix.fixes._code import method_source

from ._grpo import TOKEN_COUNT_LOSSES, trainer_class

TARGET = "trl.trainer.grpo_trainer"
HITS = "micro-batch losses normalised by the token count of their optimizer window"
UNREACHED = "no dapo/cispo/vespo GRPO step ran with steps_per_generation != gradient_accumulation_steps"
COUNT = 'inputs["num_items_in_batch"]'
PER_RANK_COUNT = r'inputs\["num_items_in_batch"\](\.clamp\(min=1(\.0)?\))? / self\.accelerator\.num_processes'
RESCALED = "* self.current_gradient_accumulation_steps / self.args.steps_per_generation"  # 1.9.1


def probe(module):
    import re

    text = method_source(trainer_class(module), "_compute_loss")
    if isinstance(text, gates.Probe):
        return text
    if COUNT not in text:
        return gates.unknown("_compute_loss does not normalise by num_items_in_batch")
    if RESCALED in text:
        return gates.fixed("the token count is rescaled to one accumulation window")
    if re.search(PER_RANK_COUNT, text):
        return gates.buggy("dapo-type losses divide by the token count of the whole generation batch")
    return gates.unknown("the dapo normaliser is neither the known buggy nor the fixed code")


def _inputs(model, inputs, *args, **kwargs):
    return inputs


def apply(module, patcher):
    def count_one_window(wrapped, trainer, args, kwargs):
        inputs = _inputs(*args, **kwargs)
        spread = trainer.args.steps_per_generation
        window = getattr(trainer, "current_gradient_accumulation_steps", None)
        window = window or trainer.args.gradient_accumulation_steps
        if (trainer.loss_type not in TOKEN_COUNT_LOSSES or not trainer.model.training or spread == window
                or not isinstance(inputs, dict) or inputs.get("num_items_in_batch") is None):
            return wrapped(*args, **kwargs)
        patcher.hit()
        inputs = {**inputs, "num_items_in_batch": inputs["num_items_in_batch"] * window / spread}
        if len(args) >= 2:
            return wrapped(args[0], inputs, *args[2:], **kwargs)
        return wrapped(*args, **{**kwargs, "inputs": inputs})

    patcher.wrap(trainer_class(module), "_compute_loss", count_one_window)
