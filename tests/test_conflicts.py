"""Another patcher got there first: gradfix reports CONFLICT and never stacks a second
correction on code it did not write (Unsloth, Liger-Kernel and Axolotl replace
framework methods with functions of their own modules, or wrap them).

Detection is by origin, not by product: a method of a class whose function comes from
another top-level package, or a wrapt wrapper that is not gradfix's, is someone else's.
"""

import functools

import pytest

import wrapt
from toy import PATCH_ID, WORKLOAD

from gradfix import gates
from gradfix.fixes._code import method_source
from gradfix.origin import replaced_by
from gradfix.patcher import PatchConflict, Patcher

STATUS = """
import json, gradfix
print("STATUS", json.dumps({s.id: [s.state, s.reason] for s in gradfix.status()}))
"""

# "otherpatch" wraps Accumulator.add with wrapt before gradfix is activated, here a pass-through
# that counts calls: gradfix cannot tell what a foreign wrapper does, so it never wraps it again.
OTHER_PATCHER = """
import wrapt, gftoy.accum
CALLS = []
def counted(wrapped, instance, args, kwargs):
    CALLS.append(1)
    return wrapped(*args, **kwargs)
gftoy.accum.Accumulator.add = wrapt.FunctionWrapper(vars(gftoy.accum.Accumulator)["add"], counted)
"""


def a_class(module_name):
    def step(self):
        return 1

    return type("Trainer", (), {"__module__": module_name, "training_step": step})


def test_foreign_function_is_a_conflict():
    owner = a_class("transformers.trainer")

    def unsloth_step(self):
        return 2

    unsloth_step.__module__ = "unsloth.models._utils"
    owner.training_step = unsloth_step
    probe = method_source(owner, "training_step")
    assert probe.verdict == gates.CodeVerdict.CONFLICT
    assert "replaced by code from unsloth.models._utils" in probe.detail
    owner.training_step = staticmethod(unsloth_step)
    assert replaced_by(owner, vars(owner)["training_step"]) == "code from unsloth.models._utils"


def test_own_code_decorators_and_gradfix_wrappers_are_not_conflicts():
    owner = a_class("transformers.trainer")
    original = vars(owner)["training_step"]
    original.__module__ = "transformers.trainer"

    @functools.wraps(original)  # a decorator of the framework itself (torch.no_grad and the like)
    def decorated(self):
        return original(self)

    assert replaced_by(owner, decorated) is None
    patcher = Patcher("demo")
    patcher.wrap(owner, "training_step", lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
    assert replaced_by(owner, vars(owner)["training_step"]) is None  # gradfix's own wrapper
    assert isinstance(method_source(owner, "training_step"), str)
    patcher.revert()


def test_foreign_wrapt_wrapper_is_a_conflict_at_apply():
    owner = a_class("transformers.trainer")
    vars(owner)["training_step"].__module__ = "transformers.trainer"
    owner.training_step = wrapt.FunctionWrapper(vars(owner)["training_step"],
                                                lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
    patcher = Patcher("demo")
    try:
        patcher.wrap(owner, "training_step", lambda wrapped, instance, args, kwargs: 0)
    except PatchConflict as exc:
        assert "wrapt wrapper that is not gradfix's" in str(exc)
    else:
        raise AssertionError("a foreign wrapt wrapper was wrapped again")
    left = vars(owner)["training_step"]  # as the other patcher left it
    assert isinstance(left, wrapt.FunctionWrapper) and getattr(left, "gradfix_patch_id", None) is None


def test_other_patcher_first_gives_conflict_and_its_own_numbers(run_python):
    """End to end: the program computes what it computes with the other patcher alone."""
    alone = run_python(OTHER_PATCHER + WORKLOAD, env={"GRADFIX": "0"}).value("RESULT")
    run = run_python(OTHER_PATCHER + "import gradfix\n" + WORKLOAD + STATUS)
    assert run.returncode == 0
    assert run.value("RESULT") == alone  # not corrected a second time
    state, reason = run.value("STATUS")[PATCH_ID]
    assert state == "conflict" and "wrapt wrapper that is not gradfix's" in reason
    assert "conflict, left alone: toy-accumulate-drop" in run.stderr
    strict = run_python(OTHER_PATCHER + "import gradfix\n" + WORKLOAD, env={"GRADFIX_STRICT": "1"})
    assert strict.returncode != 0 and PATCH_ID in strict.stderr



# A hand-made fix replaces Accumulator.add with a function of its own module: the
# behavioural probe would judge the replacement; REPLACES makes the gate see whose it is.
HAND_MADE_FIX = """
import types, gftoy.accum
def add(self, grad):
    self.total += 2 * grad  # not gftoy's code, whatever it computes
    self.micro_step += 1
handfix = types.ModuleType("handfix")
add.__module__ = "handfix"
gftoy.accum.Accumulator.add = add
"""


def test_a_replaced_method_is_a_conflict_before_the_probe(run_python):
    run = run_python(HAND_MADE_FIX + "import gradfix\n" + STATUS)
    assert run.returncode == 0
    state, reason = run.value("STATUS")[PATCH_ID]
    assert state == "conflict", reason
    assert "Accumulator.add was replaced by code from handfix" in reason


# The other order, Unsloth's: gradfix patched Accumulator.add when gftoy was imported, then
# "unsloth" rebuilds the method from its source (which is gftoy's buggy code: the source of
# a wrapt wrapper is the wrapped function's) and assigns the copy, dropping gradfix's wrapper.
REPLACED_AFTER = """
import inspect, textwrap, gftoy.accum
source = textwrap.dedent(inspect.getsource(gftoy.accum.Accumulator.add))
namespace = {"__name__": "unsloth.models._utils"}
exec(source.replace("def add(", "def _unsloth_add(", 1), namespace)
gftoy.accum.Accumulator.add = namespace["_unsloth_add"]
"""


def test_a_wrapper_replaced_after_gradfix_is_reported_as_a_conflict(run_python):
    alone = run_python(REPLACED_AFTER + WORKLOAD, env={"GRADFIX": "0"}).value("RESULT")
    patched = run_python("import gradfix\n" + WORKLOAD, env={}).value("RESULT")
    assert patched != alone  # the toy's bug is visible, so the check below can fail
    run = run_python("import gradfix\n" + REPLACED_AFTER + WORKLOAD + STATUS)
    assert run.returncode == 0
    assert run.value("RESULT") == alone  # the other patcher's code ran, not a mix
    state, reason = run.value("STATUS")[PATCH_ID]
    assert state == "conflict", reason
    assert "Accumulator.add was replaced by code from unsloth.models._utils, after gradfix had patched it" in reason
    assert run.stderr.count(f"{PATCH_ID} conflict:") == 1  # one warning, also with status() and exit


def test_the_conflict_is_reported_at_exit_without_a_status_call(run_python):
    run = run_python("import gradfix\n" + REPLACED_AFTER + WORKLOAD)
    assert run.returncode == 0
    assert f"{PATCH_ID} conflict: gftoy.accum.Accumulator.add was replaced" in run.stderr
    assert f"{PATCH_ID} applied" not in run.stderr.split("conflict:")[-1]


# Layers put on top of gradfix's wrapper after it was installed still call it: no conflict.
LAYERS = {
    "functools.wraps": """
import functools, gftoy.accum
inner = gftoy.accum.Accumulator.add
@functools.wraps(inner)
def add(self, grad):
    return inner(self, grad)
gftoy.accum.Accumulator.add = add
""",
    "closure": """
import gftoy.accum
def layer(inner):
    def add(self, grad):
        return inner(self, grad)
    add.__module__ = "monitoring"
    return add
gftoy.accum.Accumulator.add = layer(gftoy.accum.Accumulator.add)
""",
    "default argument": """
import gftoy.accum
def add(self, grad, _inner=gftoy.accum.Accumulator.add):
    return _inner(self, grad)
add.__module__ = "monitoring"
gftoy.accum.Accumulator.add = add
""",
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_on_top_of_gradfix_is_not_a_conflict(run_python, layer):
    patched = run_python("import gradfix\n" + WORKLOAD).value("RESULT")
    run = run_python("import gradfix\n" + LAYERS[layer] + WORKLOAD + STATUS)
    assert run.returncode == 0, run.stderr
    assert run.value("RESULT") == patched
    assert run.value("STATUS")[PATCH_ID][0] == "applied"
