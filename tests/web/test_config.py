"""Portal settings: the ``[portal]`` table, ``OUTLINK_PORTAL_*`` and test overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tomlconfig import ConfigError
from web.config import load_config


def test_paths_are_taken_from_the_files_folder_and_filled_from_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "portal.toml"
    path.write_text('[portal]\ndata_dir = "data"\nrelay_ca = "/etc/outlink/ca.pem"\n')
    config = load_config(path, environ={"OUTLINK_PORTAL_TLS_NAMES": "portal.example, 10.0.0.1"})
    assert config.data_dir == tmp_path / "data"
    assert config.relay_ca == Path("/etc/outlink/ca.pem")
    assert (config.staff_ca_dir, config.tls_cert, config.tls_key) == (
        tmp_path / "data" / "staff-ca",
        tmp_path / "data" / "portal.pem",
        tmp_path / "data" / "portal.key",
    )
    assert config.tls_names == ["portal.example", "10.0.0.1"]
    assert config.upload_dir is None


def test_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "portal.toml"
    path.write_text("[portal]\nworkers = 3\n")
    config = load_config(path, {"workers": 5, "data_dir": tmp_path / "d"}, {})
    assert config.workers == 5 and config.tls_cert == tmp_path / "d" / "portal.pem"


@pytest.mark.parametrize(
    ("front", "trusted"), [("nginx", True), ("system-nginx", True), ("gunicorn", False)]
)
def test_behind_nginx_the_forwarded_address_is_the_client(
    tmp_path: Path, front: str, trusted: bool
) -> None:
    """nginx sets X-Forwarded-For; the unix socket it reaches gunicorn on has no address."""
    config = load_config(None, {"front": front, "data_dir": tmp_path}, {})
    assert config.trust_proxy is trusted and config.app_socket == tmp_path / "portal.sock"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        # Used to be False without a word: a typo must not switch a setting off.
        (
            "",
            {"OUTLINK_PORTAL_TRUST_PROXY": "yse"},
            "OUTLINK_PORTAL_TRUST_PROXY (portal.trust_proxy): expected boolean, got 'yse'",
        ),
        # Used to pass through unchecked.
        ("[portal]\nworkers = 2.5\n", {}, "portal.workers: expected integer, got float 2.5"),
        ("[portal]\ntrust_proxy = 1\n", {}, "portal.trust_proxy: expected boolean, got integer 1"),
        ("[portal]\nrelay_timeout = true\n", {}, "portal.relay_timeout: expected float"),
        (
            '[portal]\ntrusted_proxies = ["10.0.0.0/8", "nginx"]\n',
            {},
            "portal.trusted_proxies: 'nginx' is not an address or network",
        ),
        # Used to be ignored: the whole file fell back to defaults.
        ('[portl]\nbind = "0.0.0.0:443"\n', {}, "unknown key portl (the top level has: portal)"),
        ("[portal]\nbindd = 1\n", {}, "unknown key portal.bindd (portal has: data_dir,"),
        ('[portal]\nfront = "apache"\n', {}, "portal.front: expected one of ('nginx',"),
    ],
)
def test_refused(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "portal.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert message in str(info.value)
