"""Relay configuration: defaults, TOML, env overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay_server.config import RelayConfig, load_config
from tomlconfig import ConfigError
from tunnel import Settings


def test_defaults_are_loopback_and_safe() -> None:
    config = load_config(env={})
    assert config == RelayConfig(relay_id=config.relay_id)
    assert config.listen.host == "127.0.0.1" and config.listen.port == 8443
    assert config.ops.host == "127.0.0.1" and config.ops.port == 9100
    assert config.public_service_url == "wss://127.0.0.1:8443/service"
    assert config.revocation.refresh_interval <= 60


def test_toml_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        'relay_id = "relay-a"\n'
        'db_url = "sqlite:///x.db"\n'
        "[listen]\nport = 9443\n"
        "[limits]\nconnect_rate_per_source = 5.5\n"
    )
    env = {
        "OUTLINK_RELAY_LISTEN_PORT": "10443",
        "OUTLINK_RELAY_RELAY_ID": "relay-b",
        "OUTLINK_RELAY_LOG_FORMAT": "text",
        "OUTLINK_RELAY_PORT": "1",  # not ours (the stack launcher's); ignored
    }
    config = load_config(path, env=env)
    assert config.relay_id == "relay-b"
    assert config.db_url == "sqlite:///x.db"
    assert config.listen.port == 10443
    assert config.limits.connect_rate_per_source == 5.5
    assert config.log.format == "text"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("bogus = 1\n", {}, "relay.toml: unknown key bogus (the top level has: relay_id,"),
        ("[listen]\nprot = 1\n", {}, "unknown key listen.prot (listen has: host, port,"),
        ('[listen]\nport = "x"\n', {}, "listen.port: expected integer, got string 'x'"),
        ("[listen]\nport = 70000\n", {}, "relay.toml: listen.port out of range"),
        (
            "",
            {"OUTLINK_RELAY_LISTEN_PORT": "nope"},
            "OUTLINK_RELAY_LISTEN_PORT (listen.port): expected integer, got 'nope'",
        ),
        ("[revocation]\nrefresh_interval = 61\n", {}, "within 60 s"),
        ("listen = 3\n", {}, "listen: expected table, got integer 3"),
        ("[log]\nformat = 'xml'\n", {}, "log.format: expected one of 'json', 'text'"),
    ],
)
def test_invalid_config_names_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path, env=env)
    assert message in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: config file not found"):
        load_config(tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad, env={})


def test_keepalive_defaults_follow_the_tunnel() -> None:
    """The relay must not ping before idle agents do (that doubles keepalive traffic)."""
    config = load_config(env={})
    tunnel = Settings()
    assert (config.keepalive.idle, config.keepalive.timeout) == (
        tunnel.server_ping_idle,
        tunnel.server_ping_timeout,
    )
    assert config.keepalive.idle > tunnel.client_ping_idle
    assert (config.limits.max_channels, config.limits.max_pending_opens) == (
        tunnel.max_channels,
        tunnel.max_pending_opens,
    )
