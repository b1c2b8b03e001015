"""Agent config: defaults, TOML, env overrides, and refusing unsafe values."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG_PATH, load_cli_config, load_config
from tomlconfig import ConfigError
from tunnel import Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    config = load_config(None, environ={})
    assert config.relay_urls == ()
    assert config.proxy == "auto"
    assert config.backoff.base == 1.0
    assert config.backoff.cap == 60.0
    assert config.backoff.stable_after == 20.0
    assert config.nice > 0


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
relay_urls = ["wss://relay-a.example:443/agent", "wss://relay-b.example/agent"]
ca_file = "pki/ca.pem"
data_dir = "state"
proxy = "http://user:secret@proxy.example:3128"
[backoff]
cap = 30
[keepalive]
idle = 10.0
""",
    )
    config = load_config(path, environ={})
    assert config.relay_urls == ("wss://relay-a.example:443/agent", "wss://relay-b.example/agent")
    assert config.ca_file == str(tmp_path / "pki" / "ca.pem")
    assert config.status_path == tmp_path / "state" / "status.json"
    assert config.backoff.cap == 30.0
    assert config.keepalive.idle == 10.0


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'relay_urls = ["wss://a.example/agent"]\n[backoff]\ncap = 30\n')
    env = {
        "OUTLINK_AGENT_RELAY_URLS": "wss://b.example/agent, wss://c.example/agent",
        "OUTLINK_AGENT_BACKOFF_CAP": "45",
        "OUTLINK_AGENT_PROXY": "none",
        "OUTLINK_AGENT_NICE": "5",
    }
    config = load_config(path, environ=env)
    assert config.relay_urls == ("wss://b.example/agent", "wss://c.example/agent")
    assert config.backoff.cap == 45.0
    assert config.proxy == "none"
    assert config.nice == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('relay_urls = ["ws://relay.example/agent"]', "wss://"),
        ('relay_urls = ["https://relay.example/agent"]', "wss://"),
        ('relay_urls = ["wss:///agent"]', "no host"),
        ('relay_urls = ["wss://u:p@relay.example/agent"]', "credentials"),
        ('relay_urls = "wss://relay.example/agent"', "relay_urls: expected array of strings"),
        ('proxy = "socks5://p:1080"', "proxy"),
        ('proxy_auth = "nocolon"', "proxy_auth"),
        ("bogus = 1", "unknown key bogus"),
        ("[backoff]\nbase = 100\ncap = 10", "base <= cap"),
        ("[backoff]\njitter = 1", "unknown key backoff.jitter"),
        ('nice = "high"', "nice: expected integer, got string 'high'"),
        ('log_format = "xml"', "log_format: expected one of 'text', 'json'"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_ws_url_from_env_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="wss://"):
        load_config(None, environ={"OUTLINK_AGENT_RELAY_URLS": "ws://relay.example/agent"})


def test_bad_env_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="OUTLINK_AGENT_BACKOFF_CAP"):
        load_config(None, environ={"OUTLINK_AGENT_BACKOFF_CAP": "soon"})


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="TOML"):
        load_config(write(tmp_path, "relay_urls = ["), environ={})


def test_keepalive_defaults_are_the_tunnels() -> None:
    """Decision 0005 tuned the client's keepalive in the tunnel; agents must run it."""
    keepalive = load_config(None, environ={}).keepalive
    tunnel = Settings()
    assert (keepalive.idle, keepalive.timeout) == (
        tunnel.client_ping_idle,
        tunnel.client_ping_timeout,
    )


def test_cli_config_falls_back_to_defaults_without_a_system_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTLINK_AGENT_NICE", "7")
    if not Path(DEFAULT_CONFIG_PATH).exists():
        assert load_cli_config(DEFAULT_CONFIG_PATH) == load_config(None)
    assert load_cli_config(None).nice == 7
    path = write(tmp_path, "nice = 12\n")
    assert load_cli_config(str(path)) == load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_cli_config(str(tmp_path / "absent.toml"))
