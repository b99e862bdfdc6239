"""How hf-dp-token-average tells an explicit average_tokens_across_devices from the
default, on a stand-in dataclass (the real TrainingArguments run in
tests/transformers_releases)."""

import dataclasses

from gradfix.fixes.transformers.dp_token_average import chosen_explicitly


@dataclasses.dataclass
class Arguments:
    output_dir: str = "out"
    average_tokens_across_devices: bool = False
    seed: int = 0


def test_a_keyword_argument_is_a_choice():
    assert chosen_explicitly(Arguments, {"average_tokens_across_devices": False}, argv=[])
    assert chosen_explicitly(Arguments, {"output_dir": "x", "average_tokens_across_devices": False}, argv=[])


def test_leaving_it_out_is_the_default():
    assert not chosen_explicitly(Arguments, {}, argv=[])
    assert not chosen_explicitly(Arguments, {"output_dir": "x"}, argv=["--average_tokens_across_devices", "False"])


def test_hf_argument_parser_passes_every_field_so_the_command_line_decides():
    every = {"output_dir": "x", "average_tokens_across_devices": False, "seed": 0}
    assert not chosen_explicitly(Arguments, every, argv=["--output_dir", "x"])
    assert chosen_explicitly(Arguments, every, argv=["--average_tokens_across_devices", "False"])
    assert chosen_explicitly(Arguments, every, argv=["--average_tokens_across_devices=false"])
    assert chosen_explicitly(Arguments, every, argv=["--average-tokens-across-devices", "false"])
    assert not chosen_explicitly(Arguments, every, argv=["--average_tokens_across_devices_x"])
