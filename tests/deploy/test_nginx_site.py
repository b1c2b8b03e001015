"""The shipped nginx site is what the portal renders for the example config (decision 0014)."""

from __future__ import annotations

from pathlib import Path

from web.config import load_config
from web.frontproxy import server_conf

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_shipped_site_is_the_rendered_one() -> None:
    """Regenerate with ``python -m web nginx-config --config deploy/portal.example.toml``."""
    config = load_config(DEPLOY / "portal.example.toml")
    assert (DEPLOY / "nginx" / "outlink-portal.conf").read_text() == server_conf(config)
    assert config.front == "system-nginx" and config.trust_proxy
