import types

import pytest
import wrapt

from gradfix.patcher import GradfixWrapper, Patcher, PatchError


def make_class():
    class Base:
        def scale(self, x):
            return x * 2

        @staticmethod
        def static(x):
            return x + 1

        @classmethod
        def klass(cls, x):
            return (cls.__name__, x)

    class Child(Base):
        pass

    class Overrider(Base):
        def scale(self, x):
            return x * 3

    return Base, Child, Overrider


def add_ten(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    return result + 10 if not isinstance(result, tuple) else result + ("wrapped",)


def test_wrap_where_defined_reaches_subclasses_and_existing_objects():
    Base, Child, Overrider = make_class()
    existing = Child()
    patcher = Patcher("demo")
    patcher.wrap(Base, "scale", add_ten)
    assert existing.scale(1) == 12 and Base().scale(1) == 12
    assert Overrider().scale(1) == 3  # its own method is not ours to change ...
    assert patcher.notes == ["make_class.<locals>.Overrider overrides scale and is not patched"]  # ... but it is reported
    assert isinstance(vars(Base)["scale"], GradfixWrapper)
    assert patcher.locations == (f"{__name__}.make_class.<locals>.Base.scale",)


def test_overrides_checked_by_the_fix_are_not_reported():
    Base, _, Overrider = make_class()
    patcher = Patcher("demo")
    patcher.wrap(Base, "scale", add_ten, overridden_on_purpose=(Overrider,))
    assert patcher.notes == []
    assert Overrider().scale(1) == 3


def test_wrap_static_and_class_methods_keep_binding():
    Base, Child, _ = make_class()
    patcher = Patcher("demo")
    patcher.wrap(Base, "static", add_ten)
    patcher.wrap(Base, "klass", add_ten)
    assert Base.static(1) == 12 and Child().static(1) == 12
    assert Child.klass(5) == ("Child", 5, "wrapped")


def test_wrap_refuses_inherited_attribute():
    _, Child, _ = make_class()
    with pytest.raises(PatchError, match="does not define 'scale' itself"):
        Patcher("demo").wrap(Child, "scale", add_ten)


def test_wrapping_twice_wraps_once():
    Base, _, _ = make_class()
    patcher = Patcher("demo")
    patcher.wrap(Base, "scale", add_ten)
    patcher.wrap(Base, "scale", add_ten)
    assert Base().scale(1) == 12
    assert not isinstance(vars(Base)["scale"].__wrapped__, GradfixWrapper)


def test_revert_restores_the_exact_originals():
    Base, _, _ = make_class()
    originals = {name: vars(Base)[name] for name in ("scale", "static", "klass")}
    module = types.ModuleType("demo_module")
    module.helper = lambda x: x
    original_helper = module.helper
    patcher = Patcher("demo")
    for name in originals:
        patcher.wrap(Base, name, add_ten)
    patcher.wrap(module, "helper", add_ten)
    assert module.helper(1) == 11
    patcher.revert()
    assert all(vars(Base)[name] is obj for name, obj in originals.items())
    assert module.helper is original_helper


def test_revert_refuses_when_something_wrapped_on_top():
    Base, _, _ = make_class()
    patcher = Patcher("demo")
    patcher.wrap(Base, "scale", add_ten)
    ours = vars(Base)["scale"]
    wrapt.wrap_function_wrapper(Base, "scale", add_ten)  # another library wraps after us
    theirs = vars(Base)["scale"]
    with pytest.raises(PatchError, match="changed after gradfix patched it"):
        patcher.revert()
    assert vars(Base)["scale"] is theirs and theirs.__wrapped__ is ours  # nothing was dropped
    assert Base().scale(1) == 22


def test_hits_are_counted_across_threads():
    import threading

    patcher = Patcher("demo")
    threads = [threading.Thread(target=lambda: [patcher.hit() for _ in range(1000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert patcher.hits == 4000


def test_define_gives_a_class_its_own_new_and_revert_removes_it():
    Base, Child, _ = make_class()
    seen = []

    def remember(cls, *args, **kwargs):
        seen.append((cls.__name__, kwargs))
        return object.__new__(cls)

    patcher = Patcher("p")
    patcher.define(Base, "__new__", staticmethod(remember))
    Child(), Base()
    assert seen == [("Child", {}), ("Base", {})]
    assert patcher.locations and not patcher.covered_elsewhere()
    patcher.revert()
    assert "__new__" not in vars(Base)
    Child()
    assert len(seen) == 2  # object.__new__ again


def test_define_refuses_a_name_the_class_defines():
    Base, _, _ = make_class()
    with pytest.raises(PatchError, match="already defines 'scale'; wrap it instead"):
        Patcher("p").define(Base, "scale", lambda self, x: x)


WHERE = f"{__name__}.make_class.<locals>.Base"


def test_displaced_lists_a_replaced_wrapper_and_withdraw_silences_the_rest():
    Base, _, _ = make_class()
    calls = []

    def noted(name):
        def wrapper(wrapped, instance, args, kwargs):
            calls.append(name)
            return wrapped(*args, **kwargs)
        return wrapper

    patcher = Patcher("p")
    patcher.wrap(Base, "scale", noted("scale"))
    patcher.wrap(Base, "static", noted("static"))
    assert patcher.displaced() == []

    def scale(self, x):
        return x

    scale.__module__ = "unsloth.models._utils"
    Base.scale = scale
    assert patcher.displaced() == [(f"{WHERE}.scale", "code from unsloth.models._utils")]
    Base.static(1)
    assert calls == ["static"]
    assert patcher.withdraw() == []
    assert Base.static(1) == 2 and calls == ["static"]  # the remaining wrapper is gone
    assert not isinstance(vars(Base)["static"], GradfixWrapper) and vars(Base)["scale"] is scale


def test_withdraw_leaves_a_wrapper_that_someone_layered_on_top_of():
    Base, _, _ = make_class()
    patcher = Patcher("p")
    patcher.wrap(Base, "scale", lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
    patcher.wrap(Base, "static", lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
    Base.scale = wrapt.FunctionWrapper(vars(Base)["scale"], lambda wrapped, instance, args, kwargs: 0)
    assert patcher.displaced() == []  # the layer still calls gradfix's wrapper
    del Base.static
    assert patcher.withdraw() == [f"{WHERE}.scale"]


def test_a_gradfix_wrapper_on_top_of_another_is_not_a_displacement():
    Base, _, _ = make_class()
    inner, outer = Patcher("inner"), Patcher("outer")
    inner.wrap(Base, "scale", lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
    outer.wrap(Base, "scale", lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
    assert inner.displaced() == [] and outer.displaced() == []
    del Base.scale
    assert inner.displaced() == [(f"{WHERE}.scale", "deleted")]
