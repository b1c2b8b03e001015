"""The one configuration loader: types, tables, the environment, and its messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest

from tomlconfig import ConfigError, ConfigFile, Relative, Via


@dataclass(frozen=True)
class Limits:
    count: int = 3
    rate: float = 1.5
    on: bool = True


@dataclass(frozen=True)
class Item:
    name: str
    path: Relative[str] = ""
    size: int = 10


@dataclass(frozen=True)
class Hook:
    url: str
    secret: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Words:
    extra: tuple[str, ...] = ()


def _all_words(words: Words) -> tuple[str, ...]:
    if "bad" in words.extra:
        raise ValueError("'bad' is not a word")
    return ("base", *words.extra)


@dataclass(frozen=True)
class Example:
    name: str = "x"
    format: Literal["text", "json"] = "text"
    enabled: bool | None = None
    home: Relative[Path] = Path("var/home")
    cache: Relative[str] = ""
    tags: tuple[str, ...] = ("a",)
    ports: list[int] = field(default_factory=lambda: [1])
    labels: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    items: tuple[Item, ...] = ()
    hooks: Mapping[str, Hook] = field(default_factory=dict)
    words: Annotated[tuple[str, ...], Via(Words, _all_words)] = ("base",)


def _check(config: Example) -> None:
    if config.limits.count > 100:
        raise ConfigError("limits.count: must be <= 100")


EXAMPLE = ConfigFile(Example, "OUTLINK_TEST_", check=_check)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "example.toml"
    path.write_text(text)
    return path


def refused(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        EXAMPLE.load(path, environ or {})
    return str(info.value)


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = EXAMPLE.load(None, {})
    assert config == Example(home=tmp_path / "var/home")


def test_types_nested_tables_lists_and_maps(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
name = "n"
format = "json"
enabled = false
tags = ["b", "c"]
ports = [80, 443]
labels = { site = "lab" }
[limits]
count = 7
rate = 2          # an integer is a float too
[[items]]
name = "one"
path = "logs/one.log"
[[items]]
name = "two"
[hooks.ops]
url = "https://hooks.example/"
secret = "s3cret"
[words]
extra = ["more"]
""",
    )
    config = EXAMPLE.load(path, {})
    assert (config.name, config.format, config.enabled) == ("n", "json", False)
    assert config.tags == ("b", "c") and config.ports == [80, 443]
    assert config.labels == {"site": "lab"}
    assert config.limits == Limits(count=7, rate=2.0, on=True)
    assert isinstance(config.limits.rate, float)
    assert config.items == (Item("one", str(tmp_path / "logs/one.log")), Item("two"))
    assert config.hooks == {"ops": Hook("https://hooks.example/", b"s3cret")}
    assert config.words == ("base", "more")


def test_relative_paths_are_taken_from_the_files_directory(tmp_path: Path) -> None:
    path = write(tmp_path, 'cache = "c"\n')
    config = EXAMPLE.load(path, {"OUTLINK_TEST_HOME": "h"})
    assert config.cache == str(tmp_path / "c") and config.home == tmp_path / "h"
    assert EXAMPLE.load(path, {}).home == tmp_path / "var/home"  # defaults too
    absolute = write(tmp_path, 'cache = "/abs/c"\n')
    assert EXAMPLE.load(absolute, {}).cache == "/abs/c"
    assert EXAMPLE.load(write(tmp_path, ""), {}).cache == ""  # "" stays unset


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nmae = 1", "unknown key nmae (the top level has: name, format,"),
        ("[limits]\ncuont = 1", "unknown key limits.cuont (limits has: count, rate, on)"),
        ('[[items]]\nname = "a"\nsise = 1', "unknown key items[0].sise (items[0] has:"),
        ('[hooks.ops]\nurl = "u"\ntoken = "t"', "unknown key hooks.ops.token"),
        ("name = 1", "name: expected string, got integer 1"),
        ('format = "xml"', "format: expected one of 'text', 'json', got string 'xml'"),
        ('enabled = "yes"', "enabled: expected boolean, got string 'yes'"),
        ("[limits]\ncount = 1.5", "limits.count: expected integer, got float 1.5"),
        ("[limits]\ncount = true", "limits.count: expected integer, got boolean True"),
        ("[limits]\nrate = true", "limits.rate: expected float, got boolean True"),
        ('tags = "a"', "tags: expected array of strings, got string 'a'"),
        ("tags = [1]", "tags[0]: expected string, got integer 1"),
        ("ports = [[1]]", "ports[0]: expected integer, got an array"),
        ("labels = { a = 1 }", "labels.a: expected string, got integer 1"),
        ("limits = 3", "limits: expected table, got integer 3"),
        ("items = [1]", "items[0]: expected table, got integer 1"),
        ("[[items]]\nsize = 1", "items[0].name: missing (required)"),
        ("hooks = 1", "hooks: expected table of tables, got integer 1"),
        ("[hooks.ops]\nurl = 1", "hooks.ops.url: expected string, got integer 1"),
        ('[words]\nextra = ["bad"]', "words: 'bad' is not a word"),
        ("[limits]\ncount = 101", "limits.count: must be <= 100"),
    ],
)
def test_refused_with_file_key_and_expected_type(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert refused(path).startswith(f"{path}: ")
    assert message in refused(path)


def test_bad_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name = [\n")
    assert refused(path).startswith(f"{path}: not valid TOML: ")
    assert refused(tmp_path / "absent.toml") == f"{tmp_path / 'absent.toml'}: config file not found"
    (tmp_path / "latin1.toml").write_bytes(b'name = "\xe9"\n')
    assert "not UTF-8" in refused(tmp_path / "latin1.toml")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name = "file"\nenabled = true\n[limits]\ncount = 7\n'
        '[hooks.ops]\nurl = "https://hooks.example/"\nsecret = "in-the-file"\n',
    )
    env = {
        "OUTLINK_TEST_NAME": "env",
        "OUTLINK_TEST_LIMITS_RATE": "0.25",  # a key the file leaves out
        "OUTLINK_TEST_LIMITS_ON": "off",
        "OUTLINK_TEST_ENABLED": "auto",  # unsets an optional boolean
        "OUTLINK_TEST_TAGS": "x, y,",
        "OUTLINK_TEST_PORTS": "8443,9443",
        "OUTLINK_TEST_HOOKS_OPS_SECRET": "from-the-env",
        "OUTLINK_TEST_WORDS_EXTRA": "w",
        "OUTLINK_TEST_HOOKS_DEV_SECRET": "ignored: the file declares no hook 'dev'",
        "OUTLINK_TESTING": "not ours",
    }
    config = EXAMPLE.load(path, env)
    assert (config.name, config.enabled, config.tags, config.ports) == (
        "env",
        None,
        ("x", "y"),
        [8443, 9443],
    )
    assert config.limits == Limits(count=7, rate=0.25, on=False)
    assert config.hooks["ops"].secret == b"from-the-env" and set(config.hooks) == {"ops"}
    assert config.words == ("base", "w")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OUTLINK_TEST_LIMITS_COUNT": "many"},
            "OUTLINK_TEST_LIMITS_COUNT (limits.count): expected integer, got 'many'",
        ),
        (
            {"OUTLINK_TEST_LIMITS_ON": "maybe"},
            "OUTLINK_TEST_LIMITS_ON (limits.on): expected boolean, got 'maybe'",
        ),
        ({"OUTLINK_TEST_FORMAT": "xml"}, "OUTLINK_TEST_FORMAT (format): expected one of"),
        ({"OUTLINK_TEST_PORTS": "1,x"}, "OUTLINK_TEST_PORTS (ports): expected integer, got 'x'"),
        ({"OUTLINK_TEST_ITEMS": "a"}, "OUTLINK_TEST_ITEMS (items): this key cannot be set"),
        ({"OUTLINK_TEST_LABELS": "a"}, "OUTLINK_TEST_LABELS (labels): this key cannot be set"),
        ({"OUTLINK_TEST_LIMITS_COUNT": "101"}, "limits.count: must be <= 100"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        EXAMPLE.load(None, env)
    assert message in str(info.value)


@dataclass(slots=True)
class Portalish:
    bind: str = "127.0.0.1:1"
    data: Relative[Path | None] = None
    workers: int = 2


PORTALISH = ConfigFile(Portalish, "OUTLINK_P_", table="portal")


def test_a_role_in_one_table_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[portal]\nbind = "0.0.0.0:2"\ndata = "d"\n')
    config = PORTALISH.load(path, {"OUTLINK_P_WORKERS": "4"})
    assert config == Portalish("0.0.0.0:2", tmp_path / "d", 4)
    overridden = PORTALISH.load(path, {"OUTLINK_P_WORKERS": "4"}, {"workers": 8, "data": None})
    assert (overridden.workers, overridden.data) == (8, None)
    assert PORTALISH.load(path, {"OUTLINK_P_DATA": ""}).data is None
    with pytest.raises(ConfigError, match=r"unknown key portal\.bindd"):
        PORTALISH.load(write(tmp_path, "[portal]\nbindd = 1\n"), {})
    with pytest.raises(ConfigError, match=r"unknown key portl \(the top level has: portal\)"):
        PORTALISH.load(write(tmp_path, "[portl]\nbind = 1\n"), {})
    with pytest.raises(ConfigError, match=r"unknown key portal\.typo"):
        PORTALISH.load(None, {}, {"typo": 1})
    with pytest.raises(ConfigError, match=r"portal\.workers: expected integer, got string '8'"):
        PORTALISH.load(None, {}, {"workers": "8"})
