import importlib.util
from pathlib import Path

import pytest

from gradfix import config


def test_defaults():
    settings = config.parse({})
    assert settings.switch is None and not settings.killed
    assert settings.disabled == () and not settings.disable_all
    assert not settings.strict and settings.log_level == "info"
    assert settings.problems == ()


@pytest.mark.parametrize("raw,expected", [("1", True), ("TRUE", True), (" on ", True), ("0", False), ("off", False), ("", None)])
def test_switch_values(raw, expected):
    assert config.parse({"GRADFIX": raw}).switch is expected


def test_bad_switch_names_value_and_valid_ones():
    settings = config.parse({"GRADFIX": "maybe"})
    assert settings.switch is None
    (problem,) = settings.problems
    assert "GRADFIX='maybe'" in problem and "1" in problem and "0" in problem


def test_bad_log_level_and_strict():
    settings = config.parse({"GRADFIX_LOG": "loud", "GRADFIX_STRICT": "2"})
    assert settings.log_level == "info" and settings.strict is False
    text = " ".join(settings.problems)
    assert "GRADFIX_LOG='loud'" in text and "quiet, info, debug" in text
    assert "GRADFIX_STRICT='2'" in text


def test_disable_list_and_star():
    settings = config.parse({"GRADFIX_DISABLE": " a-b , ,c "})
    assert settings.disabled == ("a-b", "c")
    assert settings.is_disabled("c") and not settings.is_disabled("d")
    assert config.parse({"GRADFIX_DISABLE": "*"}).is_disabled("anything")


def test_unknown_disable_ids_are_named_with_the_valid_ones():
    settings = config.parse({"GRADFIX_DISABLE": "known,nope"})
    problem = config.unknown_ids_problem(settings, ["known", "other"])
    assert "'nope'" in problem and "known, other" in problem and "'known'" not in problem
    assert config.unknown_ids_problem(config.parse({"GRADFIX_DISABLE": "known"}), ["known"]) is None


def test_bootstrap_accepts_the_same_values_as_config():
    # The start-up module cannot import gradfix, so it keeps its own copy of the tables.
    path = Path(config.__file__).parent / "_site" / "_gradfix_bootstrap.py"
    if not path.exists():  # installed wheel: the module sits at the site-packages root
        path = Path(importlib.util.find_spec("_gradfix_bootstrap").origin)
    spec = importlib.util.spec_from_file_location("bootstrap_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TRUE_VALUES == config.TRUE_VALUES
    assert module.FALSE_VALUES == config.FALSE_VALUES
