"""Which HTTP proxy (if any) to use for a relay URL (R15).

Order of authority: explicit config (``proxy = "http://..."`` or ``"none"``) >
PAC (``pac_file`` or ``pac_url``, evaluated with `pypac`) > environment
(``https_proxy``/``HTTPS_PROXY`` with ``no_proxy``/``NO_PROXY``) > direct.

The answer is a list of candidates to try in order, because a PAC file may say
``"PROXY a:3128; PROXY b:3128; DIRECT"``. ``None`` means "connect directly".
The chosen URL goes to websockets' ``connect(proxy=...)``, which issues HTTP
CONNECT with Basic auth from the URL's userinfo; TLS to the relay then runs
inside the tunnel, so the proxy never sees plaintext and cannot substitute a
certificate that chains to the pinned CA.

`resolve_proxies` blocks (PAC download, JavaScript evaluation): call it via
`asyncio.to_thread`. Use `redact()` on anything that reaches a log line.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from pypac import get_pac
from pypac.parser import MalformedPacError, PACFile, proxy_url

from agent.config import AgentConfig

logger = logging.getLogger(__name__)

# A PAC file is a small script; a multi-megabyte one is a mistake or an attack on memory.
MAX_PAC_BYTES = 1024 * 1024
# Seconds to wait for the PAC server; the next reconnect round tries again.
PAC_DOWNLOAD_TIMEOUT = 5.0
# PAC servers in the wild label the file in many ways; pypac's default accepts only two.
PAC_CONTENT_TYPES = (
    "application/x-ns-proxy-autoconfig",
    "application/x-javascript-config",
    "application/javascript",
    "text/javascript",
    "text/plain",
)

ProxyCandidate = str | None


def resolve_proxies(
    relay_url: str, config: AgentConfig, environ: Mapping[str, str]
) -> list[ProxyCandidate]:
    """Candidates for reaching `relay_url`, best first. Never raises for a bad PAC."""
    if config.proxy == "none":
        return [None]
    if config.proxy != "auto":
        return [config.proxy]
    if config.pac_file or config.pac_url:
        pac = _load_pac(config)
        if pac is not None:
            return _from_pac(pac, relay_url, config.proxy_auth)
    env_proxy = _from_environment(relay_url, environ)
    if env_proxy is not None:
        return [_with_auth(env_proxy, config.proxy_auth)]
    return [None]


def redact(proxy: ProxyCandidate) -> str:
    """A proxy URL fit for a log line: the password replaced by ``***``."""
    if proxy is None:
        return "DIRECT"
    parts = urllib.parse.urlsplit(proxy)
    if parts.password is None:
        return proxy
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _load_pac(config: AgentConfig) -> PACFile | None:
    source = config.pac_file or config.pac_url
    try:
        if config.pac_file:
            path = Path(config.pac_file)
            if path.stat().st_size > MAX_PAC_BYTES:
                logger.warning(
                    "! PAC file %s is larger than %d bytes; ignored", path, MAX_PAC_BYTES
                )
                return None
            return PACFile(path.read_text(encoding="utf-8"))
        pac = get_pac(
            url=config.pac_url,
            timeout=PAC_DOWNLOAD_TIMEOUT,
            allowed_content_types=PAC_CONTENT_TYPES,
        )
    except (OSError, UnicodeDecodeError, MalformedPacError) as exc:
        logger.warning("! PAC %s unusable (%s); falling back to the environment", source, exc)
        return None
    if pac is None:
        logger.warning("! PAC %s could not be downloaded; falling back to the environment", source)
    return pac


def _from_pac(pac: PACFile, relay_url: str, proxy_auth: str) -> list[ProxyCandidate]:
    parts = urllib.parse.urlsplit(relay_url)
    host = parts.hostname or ""
    # Browsers hand PAC scripts wss:// URLs as https:// and strip the path (which could
    # carry secrets); do the same so corporate PAC rules written for browsers apply.
    pac_url = urllib.parse.urlunsplit(("https", parts.netloc, "/", "", ""))
    try:
        answer = pac.find_proxy_for_url(pac_url, host)
    except Exception as exc:  # dukpy raises its own JSRuntimeError for script bugs
        logger.warning("! PAC FindProxyForURL failed (%s); connecting directly", type(exc).__name__)
        return [None]
    candidates: list[ProxyCandidate] = []
    for element in str(answer).split(";"):
        element = element.strip()
        if not element:
            continue
        try:
            value = proxy_url(element)
        except ValueError:
            logger.warning("! PAC returned an unrecognised entry %r; skipped", element)
            continue
        if value == "DIRECT":
            candidates.append(None)
        elif value.startswith(("http://", "https://")):
            candidates.append(_with_auth(value, proxy_auth))
        else:
            logger.warning("! PAC proxy %s is not an HTTP proxy; skipped", value)
    if not candidates:
        logger.warning("! PAC gave no usable proxy for %s; connecting directly", host)
        return [None]
    return candidates


def _from_environment(relay_url: str, environ: Mapping[str, str]) -> str | None:
    parts = urllib.parse.urlsplit(relay_url)
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY")
    host_port = f"{parts.hostname}:{parts.port or 443}"
    # proxy_bypass_environment is public but missing from typeshed.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if no_proxy and bypass(host_port, {"no": no_proxy}):
        return None
    value = environ.get("https_proxy") or environ.get("HTTPS_PROXY")
    if not value:
        return None
    # curl and friends accept "host:port" without a scheme and mean http://.
    return value if "://" in value else f"http://{value}"


def _with_auth(proxy: str, proxy_auth: str) -> str:
    """Add `proxy_auth` ("user:pass") as userinfo unless the URL already has some."""
    parts = urllib.parse.urlsplit(proxy)
    if not proxy_auth or parts.username is not None:
        return proxy
    user, _, password = proxy_auth.partition(":")
    userinfo = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))
