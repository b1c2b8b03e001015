"""Proxy resolution: explicit config > PAC (file or URL, real pypac) > environment > direct."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.proxy import redact, resolve_proxies

RELAY = "wss://relay.example.com:8443/agent?secret=1"

PAC = """
function FindProxyForURL(url, host) {
    if (dnsDomainIs(host, ".internal.example")) return "DIRECT";
    if (url.indexOf("secret") >= 0 || url.indexOf("/agent") >= 0) return "PROXY leaked:1";
    if (url.substring(0, 6) != "https:") return "PROXY wrong-scheme:1";
    if (host == "relay.example.com") return "PROXY p1.example:3128; PROXY p2.example:8080; DIRECT";
    if (host == "socks.example.com") return "SOCKS s.example:1080; DIRECT";
    if (host == "garbage.example.com") return "BANANA x";
    return "DIRECT";
}
"""


def cfg(**kwargs: object) -> AgentConfig:
    return dataclasses.replace(AgentConfig(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def pac_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.pac"
    path.write_text(PAC)
    return path


def test_explicit_proxy_wins_over_everything(pac_file: Path) -> None:
    config = cfg(proxy="http://u:p@explicit.example:3128", pac_file=str(pac_file))
    env = {"HTTPS_PROXY": "http://env.example:1"}
    assert resolve_proxies(RELAY, config, env) == ["http://u:p@explicit.example:3128"]


def test_none_means_direct_even_with_env_and_pac(pac_file: Path) -> None:
    config = cfg(proxy="none", pac_file=str(pac_file))
    assert resolve_proxies(RELAY, config, {"HTTPS_PROXY": "http://env.example:1"}) == [None]


def test_pac_file_gives_ordered_candidates_with_direct_fallback(pac_file: Path) -> None:
    config = cfg(pac_file=str(pac_file))
    got = resolve_proxies(RELAY, config, {"HTTPS_PROXY": "http://env.example:1"})
    assert got == ["http://p1.example:3128", "http://p2.example:8080", None]


def test_pac_direct_for_internal_hosts(pac_file: Path) -> None:
    got = resolve_proxies("wss://relay.internal.example/agent", cfg(pac_file=str(pac_file)), {})
    assert got == [None]


def test_pac_socks_entries_are_skipped_and_garbage_means_direct(pac_file: Path) -> None:
    config = cfg(pac_file=str(pac_file))
    assert resolve_proxies("wss://socks.example.com/agent", config, {}) == [None]
    assert resolve_proxies("wss://garbage.example.com/agent", config, {}) == [None]


def test_proxy_auth_is_added_to_pac_and_env_proxies(pac_file: Path) -> None:
    config = cfg(pac_file=str(pac_file), proxy_auth="svc:p@ss word")
    got = resolve_proxies(RELAY, config, {})
    assert got[0] == "http://svc:p%40ss%20word@p1.example:3128"
    config = cfg(proxy_auth="svc:pw")
    assert resolve_proxies(RELAY, config, {"https_proxy": "proxy.example:3128"}) == [
        "http://svc:pw@proxy.example:3128"
    ]


def test_malformed_pac_falls_back_to_environment(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pac"
    bad.write_text("function FindProxyForURL(url, host) { return undefinedThing(); }")
    config = cfg(pac_file=str(bad))
    assert resolve_proxies(RELAY, config, {"HTTPS_PROXY": "http://env.example:1"}) == [
        "http://env.example:1"
    ]
    missing = cfg(pac_file=str(tmp_path / "missing.pac"))
    assert resolve_proxies(RELAY, missing, {}) == [None]


def test_environment_lowercase_first_and_no_proxy() -> None:
    env = {"https_proxy": "http://lower.example:1", "HTTPS_PROXY": "http://upper.example:2"}
    assert resolve_proxies(RELAY, cfg(), env) == ["http://lower.example:1"]
    for no_proxy in ("example.com", ".example.com", "relay.example.com", "*", "a.b, example.com"):
        env = {"HTTPS_PROXY": "http://p.example:1", "NO_PROXY": no_proxy}
        assert resolve_proxies(RELAY, cfg(), env) == [None], no_proxy
    env = {"HTTPS_PROXY": "http://p.example:1", "no_proxy": "other.example"}
    assert resolve_proxies(RELAY, cfg(), env) == ["http://p.example:1"]


def test_no_configuration_means_direct() -> None:
    # HTTP_PROXY is for plain http:// URLs; a wss:// relay uses https_proxy only.
    assert resolve_proxies(RELAY, cfg(), {"HTTP_PROXY": "http://plain.example:1"}) == [None]


class PacHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAC.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ns-proxy-autoconfig")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def pac_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PacHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/proxy.pac"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pac_url_is_downloaded_and_evaluated(pac_server: str) -> None:
    got = resolve_proxies(RELAY, cfg(pac_url=pac_server), {})
    assert got == ["http://p1.example:3128", "http://p2.example:8080", None]


def test_unreachable_pac_url_falls_back_to_environment() -> None:
    config = cfg(pac_url="http://127.0.0.1:9/proxy.pac")
    assert resolve_proxies(RELAY, config, {"HTTPS_PROXY": "http://env.example:1"}) == [
        "http://env.example:1"
    ]


def test_redact_hides_passwords_only() -> None:
    assert redact("http://user:s3cret@proxy.example:3128") == "http://user:***@proxy.example:3128"
    assert "s3cret" not in redact("http://user:s3cret@proxy.example")
    assert redact("http://proxy.example:3128") == "http://proxy.example:3128"
    assert redact(None) == "DIRECT"
