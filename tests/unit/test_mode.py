from __future__ import annotations

from pathlib import Path

import pytest

from collector.backends.clearml.mode import decide
from collector.config import CollectorConfig, ConfigError


def test_no_server_configured_means_offline_and_says_where_it_looked(tmp_path: Path) -> None:
    mode = decide(False, {"HOME": str(tmp_path)})
    assert mode.offline
    assert "no ClearML server is configured" in mode.reason
    assert str(tmp_path / "clearml.conf") in mode.reason


def test_api_host_means_online() -> None:
    mode = decide(False, {"CLEARML_API_HOST": "http://clearml:8008"})
    assert not mode.offline
    assert "http://clearml:8008" in mode.reason


@pytest.mark.parametrize(
    "text", ["api {\n  api_server: http://h:8008\n}\n", "api.api_server = http://h:8008\n"]
)
def test_a_config_file_with_an_api_server_means_online(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "custom.conf"
    conf.write_text(text)
    mode = decide(False, {"CLEARML_CONFIG_FILE": str(conf), "HOME": str(tmp_path)})
    assert not mode.offline
    assert str(conf) in mode.reason


def test_home_clearml_conf_is_read_and_a_config_without_server_stays_offline(tmp_path: Path) -> None:
    (tmp_path / "clearml.conf").write_text(
        "# api_server: http://commented-out\nsdk { development { x: 0 } }\n"
    )
    assert decide(False, {"HOME": str(tmp_path)}).offline
    (tmp_path / "clearml.conf").write_text("api { api_server: https://api.clear.ml }\n")
    assert not decide(False, {"HOME": str(tmp_path)}).offline


def test_offline_wins_when_forced_or_set_for_clearml() -> None:
    online = {"CLEARML_API_HOST": "http://h:8008"}
    assert decide(True, online).offline
    assert "--offline" in decide(True, online).reason
    assert decide(False, {**online, "CLEARML_OFFLINE_MODE": "1"}).offline


def test_the_offline_flag_and_call_timeout_come_from_the_environment() -> None:
    config = CollectorConfig.from_env(
        environ={"CLEARML_RELAY_OFFLINE": "yes", "CLEARML_RELAY_CLEARML_CALL_TIMEOUT": "7.5"}
    )
    assert config.offline
    assert config.call_timeout == 7.5
    assert config.backend == "clearml"
    with pytest.raises(ConfigError, match="CLEARML_RELAY_OFFLINE='maybe'"):
        CollectorConfig.from_env(environ={"CLEARML_RELAY_OFFLINE": "maybe"})
