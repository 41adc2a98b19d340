"""The settings tables: one declaration per setting yields the config, the flags and the docs.

``collector.config.SETTINGS`` (and ``LOG_SETTINGS``) and ``producer.config.SETTINGS`` are the only
places a setting is declared. These tests check that ``docs/configuration.md`` shows exactly what
the tables generate, that every collector setting has a flag and a variable that reach the same
config field, and that no variable is read without being in a table.

Run this file as a script to rewrite the generated tables in ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from collector import config
from collector.service import cli, status
from producer import config as producer_config
from producer.wire import curve

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"
TABLES = {"collector": config.docs_table, "producer": producer_config.docs_table}

#: A value other than the default for every collector setting (a new setting needs one here).
EXAMPLES: dict[str, str] = {
    "bind": "tcp://127.0.0.1:6001",
    "data_dir": "/srv/relay-data",
    "fsync": "never",
    "max_body_bytes": "1048576",
    "max_journal_bytes": "2000000",
    "journal_segment_bytes": "65536",
    "heartbeat_timeout": "30",
    "drain_timeout": "2.5",
    "backend": "jsonl",
    "offline": "true",
    "call_timeout": "5",
    "metrics_port": "9555",
    "metrics_host": "0.0.0.0",
    "keep_sessions_days": "7",
    "keep_sessions": "3",
    "curve_secret_key": "/keys/collector.key_secret",
    "allow_keys": "/keys/allowed",
    "max_file_bytes": "1000000",
    "max_runs_per_key": "10",
    "nonfinite": "clearml",
    "allow_pickled_figures": "true",
}
#: Settings that are only valid together (CurveZMQ: the secret key and the allow-list; pickled
#: figures and a bind only this machine reaches, or CURVE).
TOGETHER = {
    "curve_secret_key": "allow_keys",
    "allow_keys": "curve_secret_key",
    "allow_pickled_figures": "bind",
}
BY_NAME = {setting.name: setting for setting in config.SETTINGS}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} settings -->\n", f"<!-- END {name} settings -->"


def generated(text: str, name: str) -> str:
    """The text between the markers of table ``name`` in ``text``."""
    begin, end = _markers(name)
    assert text.count(begin) == 1, f"{DOCS} needs one line {begin.strip()!r}"
    assert text.count(end) == 1, f"{DOCS} needs one line {end!r}"
    return text.split(begin, 1)[1].split(end, 1)[0]


def rewrite(text: str) -> str:
    """``text`` with every generated table replaced by what the settings tables generate now."""
    for name, table in TABLES.items():
        begin, end = _markers(name)
        head, rest = text.split(begin, 1)
        text = head + begin + table() + end + rest.split(end, 1)[1]
    return text


@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_docs_table_is_the_one_the_settings_table_generates(name: str) -> None:
    shown = generated(DOCS.read_text(), name)
    assert shown == TABLES[name](), (
        f"docs/configuration.md's {name} table is not what the code declares: "
        f"rewrite it with `.venv/bin/python tests/unit/test_settings_table.py`"
    )


def test_every_collector_setting_is_a_config_field_with_a_flag_and_a_variable() -> None:
    fields = dataclasses.fields(config.CollectorConfig)
    assert [s.name for s in config.SETTINGS] == [f.name for f in fields], "one setting per field, in order"
    defaults = config.CollectorConfig()
    for setting in (*config.SETTINGS, *config.LOG_SETTINGS):
        assert setting.env.startswith(config.PREFIX), setting
        assert re.fullmatch(r"--[a-z][a-z-]+", setting.flag), setting
        assert setting.help, setting
        assert setting.shown, f"{setting.name}: its default must be shown (unset= for None)"
        assert f"env {setting.env}" in setting.flag_help
        assert f"default {setting.shown}" in setting.flag_help
    for setting in config.SETTINGS:
        assert getattr(defaults, setting.name) == setting.default, setting
    every = (*config.SETTINGS, *config.LOG_SETTINGS)
    assert len({s.env for s in every}) == len({s.flag for s in every}) == len(every), "no duplicates"
    # Every variable the module names is in the table (and so in the docs).
    declared = {value for name, value in vars(config).items() if name.startswith("ENV_")}
    assert declared == {s.env for s in every}


@pytest.mark.parametrize("name", [s.name for s in config.SETTINGS])
@pytest.mark.slow
def test_the_flag_and_the_variable_reach_the_same_config_field(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EXAMPLES.keys() == BY_NAME.keys(), "every setting needs an example value"
    for var in [v for v in os.environ if v.startswith(config.PREFIX)]:
        monkeypatch.delenv(var)
    names = [name, *([TOGETHER[name]] if name in TOGETHER else [])]
    argv = ["collector"]
    environ: dict[str, str] = {}
    for each in names:
        setting = BY_NAME[each]
        argv += [setting.flag] if setting.switch else [setting.flag, EXAMPLES[each]]
        environ[setting.env] = EXAMPLES[each]
    from_flags = cli.config_from_args(cli.build_parser().parse_args(argv))
    from_env = config.CollectorConfig.from_env(environ)
    value: Any = getattr(from_env, name)
    assert value != BY_NAME[name].default, f"the example for {name} must not be its default"
    assert getattr(from_flags, name) == value
    assert from_flags == from_env, "nothing but that setting changes"
    # The flag beats the variable.
    monkeypatch.setenv(BY_NAME[name].env, "not a valid value")
    assert getattr(cli.config_from_args(cli.build_parser().parse_args(argv)), name) == value


def test_the_cli_settings_read_the_flag_then_the_variable_then_the_default() -> None:
    level, log_format = config.LOG_SETTINGS
    assert config.read_setting(level, None, {}) == "INFO"
    assert config.read_setting(level, None, {level.env: " debug "}) == "DEBUG"
    assert config.read_setting(level, "ERROR", {level.env: "debug"}) == "ERROR"
    assert config.read_setting(log_format, None, {log_format.env: "JSON"}) == "json"
    with pytest.raises(config.ConfigError, match=r"^CLEARML_RELAY_LOG_LEVEL='LOUD': expected one of DEBUG,"):
        config.read_setting(level, None, {level.env: "loud"})
    args = cli.build_parser().parse_args(["--log-level", "warning", "runs"])
    assert config.read_setting(level, args.log_level, {}) == "WARNING"


def test_every_producer_variable_is_in_the_table_and_reaches_its_field(tmp_path: Path) -> None:
    table = producer_config.SETTINGS
    envs = [s.env for s in table]
    assert len(set(envs)) == len(envs)
    declared = {value for name, value in vars(producer_config).items() if name.startswith("ENV_")} - {
        producer_config.ENV_PREFIX
    }
    keys = {value for name, value in vars(curve).items() if name.startswith("ENV_")}
    assert declared | keys == set(envs), "every variable the producer reads is in the table"
    fields = {f.name for f in dataclasses.fields(producer_config.ProducerConfig)} - {
        "curve",
        "pinned",
    }  # not settings
    own = [s for s in table if s.reader == "producer"]
    assert {s.name for s in own} == fields
    assert all(s.reader in ("hooks", "keys") and not s.name for s in table if s not in own)
    examples = {
        "endpoint": ("tcp://collector:7000", "tcp://collector:7000"),
        "spool_dir": (str(tmp_path), tmp_path),
        "flush_timeout": ("1.5", 1.5),
        "max_pending": ("7", 7),
        "fsync": ("never", "never"),
        "max_outbox_bytes": ("1000", 1000),
        "max_pending_bytes": ("1000", 1000),
        "figures": ("pickle", "pickle"),
    }
    assert examples.keys() == fields
    defaults = producer_config.ProducerConfig.from_env(environ={})
    for setting in own:
        raw, value = examples[setting.name]
        from_env = producer_config.ProducerConfig.from_env(environ={setting.env: raw})
        assert getattr(from_env, setting.name) == value != getattr(defaults, setting.name)
        if setting.argument:
            given = producer_config.ProducerConfig.from_env(environ={}, **{setting.argument: value})
            assert getattr(given, setting.name) == value


def test_status_reads_the_producers_endpoint_setting() -> None:
    default = producer_config.DEFAULT_ENDPOINT
    assert status.endpoint(None, {}) == default
    assert status.endpoint(None, {producer_config.ENV_ENDPOINT: " tcp://far:1 "}) == "tcp://far:1"
    assert status.endpoint("tcp://given:2", {producer_config.ENV_ENDPOINT: "tcp://far:1"}) == "tcp://given:2"


if __name__ == "__main__":
    before = DOCS.read_text()
    after = rewrite(before)
    DOCS.write_text(after)
    print(f"{DOCS}: {'rewritten' if after != before else 'already up to date'}")
    sys.exit(0)
