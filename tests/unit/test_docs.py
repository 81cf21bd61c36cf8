"""The operator docs name every configuration option, with its variable and flag."""

from pathlib import Path

from node.config import env_var_name, flag_name, option_names

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_configuration_reference_covers_every_option():
    text = (DOCS / "configuration.md").read_text()
    for section, key in option_names():
        assert f"`{section}.{key}`" in text, f"{section}.{key} undocumented"
        assert env_var_name(section, key) in text
        assert flag_name(section, key) in text


def test_protocol_spec_names_every_dcloud_protocol_id():
    from node.p2p import info

    text = (DOCS / "protocol.md").read_text()
    assert info.PROTOCOL in text
