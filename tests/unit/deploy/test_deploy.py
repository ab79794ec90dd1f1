"""Files in deploy/ stay true to the code."""

from pathlib import Path

from trigger import config

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_example_configuration_loads_and_lists_the_defaults():
    assert config.load(DEPLOY / "trigger.yaml") == config.Config()
