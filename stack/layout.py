"""Where the one-machine stack keeps its files: everything under one folder (``./var``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Paths and ports of a local stack; ``OUTLINK_HOME`` moves the folder."""

    root: Path
    relay_port: int = int(os.environ.get("OUTLINK_STACK_RELAY_PORT", "8443"))
    ops_port: int = int(os.environ.get("OUTLINK_STACK_OPS_PORT", "9100"))
    portal_port: int = int(os.environ.get("OUTLINK_STACK_PORTAL_PORT", "8444"))
    viewer_port: int = int(os.environ.get("OUTLINK_STACK_VIEWER_PORT", "8445"))
    smtp_port: int = int(os.environ.get("OUTLINK_STACK_SMTP_PORT", "8025"))
    webhook_port: int = int(os.environ.get("OUTLINK_STACK_WEBHOOK_PORT", "8026"))
    host: str = "localhost"

    @classmethod
    def default(cls) -> Layout:
        return cls(Path(os.environ.get("OUTLINK_HOME", "var")).resolve())

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'outlink.db'}"

    @property
    def relay_config(self) -> Path:
        return self.root / "relay.toml"

    @property
    def relay_telemetry_config(self) -> Path:
        return self.root / "relay-telemetry.toml"

    @property
    def upload_dir(self) -> Path:
        """Log files devices uploaded: the relay writes them, the portal serves them."""
        return self.root / "uploads"

    @property
    def agent_dir(self) -> Path:
        return self.root / "agent"

    @property
    def agent_config(self) -> Path:
        return self.agent_dir / "agent.toml"

    @property
    def portal_dir(self) -> Path:
        return self.root / "portal"

    @property
    def portal_config(self) -> Path:
        return self.portal_dir / "portal.toml"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def relay_url(self) -> str:
        return f"wss://{self.host}:{self.relay_port}"

    @property
    def portal_url(self) -> str:
        return f"https://{self.host}:{self.portal_port}/"
