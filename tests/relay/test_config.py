"""Relay configuration: defaults, TOML, env overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay_server.config import ConfigError, RelayConfig, load_config


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
        "OUTLINK_RELAY_ID": "relay-b",
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
        ("bogus = 1\n", {}, "unknown key(s): bogus"),
        ("[listen]\nprot = 1\n", {}, "[listen] unknown key(s): prot"),
        ('[listen]\nport = "x"\n', {}, "listen.port: expected int"),
        ("[listen]\nport = 70000\n", {}, "listen.port out of range"),
        ("", {"OUTLINK_RELAY_LISTEN_PORT": "nope"}, "listen.port: expected int"),
        ("[revocation]\nrefresh_interval = 61\n", {}, "within 60 s"),
        ("listen = 3\n", {}, "[listen] must be a table"),
        ("[log]\nformat = 'xml'\n", {}, "log.format"),
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
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [")
    with pytest.raises(ConfigError):
        load_config(bad, env={})


def test_example_config_loads() -> None:
    example = Path(__file__).parents[2] / "deploy" / "relay.example.toml"
    config = load_config(example, env={})
    assert config.listen.port == 443


def test_keepalive_defaults_follow_the_tunnel() -> None:
    """The relay must not ping before idle agents do (that doubles keepalive traffic)."""
    from tunnel import Settings

    config = load_config(env={})
    tunnel = Settings()
    assert (config.keepalive.idle, config.keepalive.timeout) == (
        tunnel.server_ping_idle,
        tunnel.server_ping_timeout,
    )
    assert config.keepalive.idle > tunnel.client_ping_idle
