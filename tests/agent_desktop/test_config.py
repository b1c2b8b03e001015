"""The ``[desktop]`` table of the agent config, and the service it gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.desktop.service import service_from_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_ask_for_consent() -> None:
    d = load_config(None, environ={}).desktop
    assert d.enabled is None  # decided at run time: on where there is a display
    assert d.consent_required is True
    assert d.consent_timeout_s == 30
    assert d.allow_remote_consent is False
    assert d.max_session_s == 14400 and d.idle_timeout_s == 900
    assert d.display == ""


def test_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[desktop]
enabled = true
consent_required = false
consent_timeout_s = 45
allow_remote_consent = true
display = ":1"
max_fps = 20
""",
    )
    d = load_config(path, environ={}).desktop
    assert (d.enabled, d.consent_required, d.consent_timeout_s) == (True, False, 45.0)
    assert (d.allow_remote_consent, d.display, d.max_fps) == (True, ":1", 20.0)
    env = {"OUTLINK_AGENT_DESKTOP_ENABLED": "auto", "OUTLINK_AGENT_DESKTOP_DISPLAY": ":2"}
    d = load_config(path, environ=env).desktop
    assert (d.enabled, d.display) == (None, ":2")
    d = load_config(path, environ={"OUTLINK_AGENT_DESKTOP_ENABLED": "no"}).desktop
    assert d.enabled is False


@pytest.mark.parametrize(
    "table",
    [
        "enabled = 1",
        "enabled = 'auto'",
        "consent_timeout_s = 2",
        "consent_timeout_s = 3600",
        "idle_timeout_s = 0",
        "display = 'not a display'",
        "display = ':0; rm -rf /'",
        "max_fps = 0",
        "cpu_budget = 1.5",
        "consent = false",
    ],
)
def test_refused(tmp_path: Path, table: str) -> None:
    with pytest.raises(ConfigError, match=r"desktop"):
        load_config(write(tmp_path, f"[desktop]\n{table}\n"), environ={})


def test_service_follows_the_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    off = load_config(write(tmp_path, "[desktop]\nenabled = false\n"), environ={})
    assert service_from_config(off, {"DISPLAY": ":5"}) is None
    on = load_config(
        write(tmp_path, f'data_dir = "{tmp_path}"\n[desktop]\nallow_remote_consent = true\n'),
        environ={},
    )
    caplog.set_level("INFO", logger="agent.desktop.service")
    service = service_from_config(on, {"DISPLAY": ":5"})
    assert service is not None
    assert service.policy.display == ":5" and service.policy.allow_remote_consent
    assert service.answers.directory == tmp_path / "desktop" / "answers"
    assert "desktop sessions on (DISPLAY=:5)" in caplog.text
