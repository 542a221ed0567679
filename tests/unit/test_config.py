"""Settings come from defaults, then CELLBOX_* variables, then the command line."""

import pytest

from cellbox.config import Config


def test_every_setting_is_read_from_its_variable(monkeypatch):
    monkeypatch.setenv("CELLBOX_PORT", "9000")
    monkeypatch.setenv("CELLBOX_EVICT_AFTER_S", "1.5")
    monkeypatch.setenv("CELLBOX_FETCH_ALLOW_PRIVATE", "yes")
    monkeypatch.setenv("CELLBOX_API_KEY", "cell_sk_live_x")
    config = Config.from_env()
    assert (config.port, config.evict_after_s, config.fetch_allow_private) == (9000, 1.5, True)
    assert config.bootstrap_api_key == "cell_sk_live_x"


def test_the_command_line_wins_and_unset_options_leave_the_rest(monkeypatch):
    monkeypatch.setenv("CELLBOX_PORT", "9000")
    config = Config.from_env(port=8123, host=None)
    assert config.port == 8123 and config.host == "127.0.0.1"


def test_a_malformed_value_names_its_variable(monkeypatch):
    monkeypatch.setenv("CELLBOX_POOL_SIZE", "many")
    with pytest.raises(ValueError, match="CELLBOX_POOL_SIZE"):
        Config.from_env()
