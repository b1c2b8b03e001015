"""The peer: x11vnc + websockify + noVNC, the browser VNC stack our users compare us with.

All three from Debian packages, set up as a careful admin would on the device:

* ``x11vnc`` on the same X display, listening on 127.0.0.1 only (``-localhost``),
  ``-shared -forever`` (viewers come and go), ``-ncache 0`` (the client-side pixel cache
  makes the framebuffer several screens tall, which noVNC shows as garbage below the
  screen), no password (the proxy in front would do the authentication; it plays no
  part in the figures). Everything else is x11vnc's default: XDAMAGE hints, polling,
  scroll detection through RECORD (``-scrollcopyrect``), the cursor sent as a shape.
* ``websockify`` with TLS (the certificate the relay uses) serving noVNC's files
  (``--web /usr/share/novnc``) on the same port, so the viewer is ``https://`` and its
  WebSocket ``wss://``, like ours.
* ``vnc_lite.html`` with its defaults: noVNC negotiates Tight with JPEG (quality level
  6, compression 2), CopyRect, and the cursor pseudo-encoding; 1:1 (``scale=false``).
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import psutil
from desktop_stack import Child, Unavailable, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

NOVNC_DIR = Path("/usr/share/novnc")
START_TIMEOUT = 20.0


class PeerStack:
    """x11vnc and websockify on ``display``; the viewer is noVNC's ``vnc_lite.html``."""

    name = "peer"

    def __init__(
        self,
        display: str,
        workdir: Path,
        cert: Path,
        key: Path,
        ca: Path,
        ports: tuple[int, int],
        host: str = "127.0.0.1",
    ) -> None:
        for tool in ("x11vnc", "websockify"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} is not installed (Debian package {tool})")
        if not (NOVNC_DIR / "vnc_lite.html").exists():
            raise Unavailable(f"noVNC is not installed ({NOVNC_DIR}, Debian package novnc)")
        self.display = display
        self.workdir = workdir
        self.cert, self.key, self.ca = cert, key, ca
        self.vnc_port, self.web_port = ports
        self.host = host
        self._children: list[Child] = []

    def __enter__(self) -> PeerStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        vnc_log = self.workdir / "x11vnc.log"
        x11vnc = Child(
            "x11vnc",
            [
                "x11vnc",
                "-display", self.display,
                "-localhost",
                "-rfbport", str(self.vnc_port),
                "-shared", "-forever", "-nopw",
                "-ncache", "0",
            ],
            vnc_log,
        )  # fmt: skip
        self._children.append(x11vnc)
        wait_until(lambda: f"PORT={self.vnc_port}" in x11vnc.tail(200), START_TIMEOUT,
                   "x11vnc to listen", [x11vnc])  # fmt: skip
        proxy = Child(
            "websockify",
            [
                "websockify",
                "--web", str(NOVNC_DIR),
                "--cert", str(self.cert), "--key", str(self.key), "--ssl-only",
                f"{self.host}:{self.web_port}",
                f"{self.host}:{self.vnc_port}",
            ],
            self.workdir / "websockify.log",
        )  # fmt: skip
        self._children.append(proxy)
        wait_until(self._serving, START_TIMEOUT, "websockify to serve noVNC", [proxy])

    def _serving(self) -> bool:
        tls = ssl.create_default_context(cafile=str(self.ca))
        try:
            url = f"https://{self.host}:{self.web_port}/vnc_lite.html"
            with urllib.request.urlopen(url, timeout=2, context=tls) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def processes(self) -> dict[str, psutil.Process]:
        return {c.name: c.process for c in self._children}

    def open_viewer(self, page: Page, timeout: float) -> None:
        base = f"https://{self.host}:{self.web_port}"
        page.goto(f"{base}/vnc_lite.html?host={self.host}&port={self.web_port}&scale=false")
        page.wait_for_function("() => window.__bench.read() && window.__bench.frame >= 0",
                               timeout=timeout * 1000, polling=100)  # fmt: skip

    def close(self) -> None:
        for child in reversed(self._children):
            with contextlib.suppress(Exception):
                child.stop()
