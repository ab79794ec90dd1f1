"""Command-line parsing that scripts rely on (the subprocess tests cover the commands themselves)."""

import pytest

from trigger.cli import parse_sim_options


def test_sim_options_are_typed_scalars():
    opts = parse_sim_options(["particle=gamma", "gamma_fraction=0.3", "size=32", "rotate=true", "log10-size-min=2.5"])
    assert opts == {"particle": "gamma", "gamma_fraction": 0.3, "size": 32, "rotate": True, "log10_size_min": 2.5}
    assert type(opts["size"]) is int


def test_sim_option_value_may_contain_equals_and_be_empty():
    assert parse_sim_options(["note=a=b", "tag="]) == {"note": "a=b", "tag": ""}


def test_sim_option_numbers_read_as_numbers_words_as_strings():
    opts = parse_sim_options(["pe_per_tev=1e3", "f=5e-1", "noise=off", "t=1:30", "b=False", "x=[1, 2]"])
    assert opts == {"pe_per_tev": 1000.0, "f": 0.5, "noise": "off", "t": "1:30", "b": False, "x": "[1, 2]"}


@pytest.mark.parametrize("item", ["particle", "=gamma", "bad key=1", "1x=2", "a.b=1"])
def test_sim_options_reject_what_is_not_key_equals_scalar(item):
    with pytest.raises(ValueError, match="--sim"):
        parse_sim_options([item])
