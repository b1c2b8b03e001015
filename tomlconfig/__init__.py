"""One way to read configuration: a TOML file into typed dataclasses, the environment over it.

Every role (agent, agent telemetry, relay, relay telemetry, portal) declares its
settings as dataclasses and one `ConfigFile`; this module reads them all the same way
(decision 0010):

* **Types come from the annotations**: ``bool``, ``int``, ``float`` (an integer is
  taken), ``str``, ``pathlib.Path``, ``bytes`` (a string, stored UTF-8),
  ``Literal["a", "b"]``, ``X | None``, ``tuple[X, ...]`` or ``list[X]`` (an array),
  ``Mapping[str, X]`` or ``dict[str, X]`` (a table with free keys) and a nested dataclass
  (a table). ``Relative[...]`` marks a path that, when relative, is taken from the
  config file's directory (the working directory without a file); "" stays "" (unset).
  ``Annotated[T, Via(shape, build)]`` reads a table as the dataclass ``shape`` and
  makes the field's value with ``build`` (a ``ValueError`` from it is refused like a
  wrong type).
* **Refused with one error type**, `ConfigError`, whose message names the file (or the
  variable), the key path and what was expected: unknown keys, wrong types, missing
  required keys, and whatever the role's ``check`` refuses.
* **Environment, one naming rule**: ``<PREFIX><KEY PATH>`` in upper case with ``.`` and
  ``-`` written ``_``. The agent's ``[backoff] cap`` is ``OUTLINK_AGENT_BACKOFF_CAP``;
  the relay telemetry's ``[webhooks.ops] secret`` is
  ``OUTLINK_TELEMETRY_WEBHOOKS_OPS_SECRET``. A variable is text: booleans are
  1/0, true/false, yes/no, on/off; arrays are comma-separated; an empty value (or
  "auto" for a boolean) unsets an optional key. Arrays of tables and free-key tables of
  plain values have no variables; a free-key table of dataclasses has variables for the
  entries the file declares.
* **Precedence**: defaults < file < environment < overrides (the portal's test config).

The lookup is driven by the declaration, so a variable is found by walking the known
keys, never by splitting its name: ``OUTLINK_RELAY_LISTEN_PORT`` cannot be mistaken
for a top-level ``listen_port`` that does not exist.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Generic, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration is invalid: the message names the file or variable and the key."""


class _RelativeMarker:
    """``Annotated`` metadata: see `Relative`."""


_RELATIVE = _RelativeMarker()

#: A path (``str`` or ``Path``) that, when relative, is taken from the config file's
#: directory, so a file written next to its certificates works from any working
#: directory. Defaults are resolved the same way.
Relative = Annotated[T, _RELATIVE]


@dataclass(frozen=True)
class Via:
    """``Annotated`` metadata: read the table as `shape`, then make the value with `build`.

    For values that are not plain dataclasses (a compiled severity table, scrub rules
    that add to built-in ones); ``build`` raises ``ValueError`` to refuse the table.
    """

    shape: type[Any]
    build: Callable[[Any], Any]


@dataclass(frozen=True)
class ConfigFile(Generic[T]):
    """How one role's configuration is read: its dataclass, variable prefix and checks."""

    schema: type[T]
    #: e.g. ``"OUTLINK_AGENT_"``; see the module docstring for the naming rule.
    env_prefix: str
    #: Checks across keys (ranges, URLs): raise `ConfigError` naming the key; the file's
    #: name is added to the message.
    check: Callable[[T], None] | None = None
    #: The role's keys live in this table of the file (the portal's ``[portal]``); the
    #: file may hold nothing else. ``""``: the whole file. Variables skip the table name.
    table: str = ""

    def load(
        self,
        path: str | os.PathLike[str] | None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> T:
        """Read `path` (None: defaults only), then `environ` (None: ``os.environ``)."""
        if path is None:
            return self.parse({}, base=Path.cwd(), environ=environ, overrides=overrides)
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not UTF-8 text: {exc.reason}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        return self.parse(
            raw,
            base=file.resolve().parent,
            environ=environ,
            overrides=overrides,
            source=str(file),
        )

    def parse(
        self,
        raw: Mapping[str, Any],
        *,
        base: Path,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> T:
        """Build from an already parsed document; `source` names it in messages."""
        reader = _Reader(source, base, os.environ if environ is None else environ)
        where = ""
        if self.table:
            stray = sorted(set(raw) - {self.table})
            if stray:
                raise reader.unknown(stray, "", [self.table])
            raw = raw.get(self.table, {})
            where = self.table + "."
        config: T = reader.table(self.schema, raw, where, self.env_prefix, overrides or {})
        if self.check is not None:
            try:
                self.check(config)
            except ConfigError as exc:
                raise ConfigError(reader.prefix + str(exc)) from None
        return config


_MISSING: Any = dataclasses.MISSING
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class _Reader:
    source: str  # the file's name; "" when the values come from defaults and variables
    base: Path
    environ: Mapping[str, str]

    @property
    def prefix(self) -> str:
        return f"{self.source}: " if self.source else ""

    # -- tables ---------------------------------------------------------------------------

    def table(
        self,
        cls: Any,
        raw: Any,
        where: str,
        env: str | None,
        overrides: Mapping[str, Any],
    ) -> Any:
        """An instance of dataclass `cls` from table `raw` (key paths start with `where`).

        `env` is the variable prefix of this table, None inside arrays (no variables).
        """
        if not isinstance(raw, Mapping):
            raise self.wrong(where.rstrip(".") or "top level", "table", raw)
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        stray = sorted((set(raw) | set(overrides)) - set(fields))
        if stray:
            raise self.unknown(stray, where, fields)
        values: dict[str, Any] = {}
        for name, f in fields.items():
            key = where + name
            var = _var(env, name)
            value = self.field(hints[name], raw.get(name, _MISSING), key, var)
            if name in overrides:
                value = self.value(_plain(hints[name]), overrides[name], key)
            if value is _MISSING and _is_relative(hints[name]) and f.default is not _MISSING:
                value = f.default
            if value is not _MISSING:
                values[name] = self.relative(hints[name], value)
            elif f.default is _MISSING and f.default_factory is _MISSING:
                raise ConfigError(f"{self.prefix}{key}: missing (required)")
        return cls(**values)

    def field(self, hint: Any, raw: Any, key: str, var: str | None) -> Any:
        """The value of one key from the file and the environment; _MISSING: default."""
        plain = _plain(hint)
        via = next((m for m in typing.get_args(hint)[1:] if isinstance(m, Via)), None)
        if via is not None or dataclasses.is_dataclass(plain):
            # Tables are always built, so that variables reach keys the file leaves out.
            shape = plain if via is None else via.shape
            table = self.table(shape, {} if raw is _MISSING else raw, key + ".", _sub(var), {})
            if via is None:
                return table
            try:
                return via.build(table)
            except ValueError as exc:
                raise ConfigError(f"{self.prefix}{key}: {exc}") from None
        value = _MISSING
        entry = _args(plain)[1] if _is_map(plain) else None
        if raw is not _MISSING and dataclasses.is_dataclass(entry) and isinstance(raw, Mapping):
            # A free-key table of tables: each entry the file declares takes variables.
            value = {
                name: self.table(entry, table, f"{key}.{name}.", _sub(_var(_sub(var), name)), {})
                for name, table in raw.items()
            }
        elif raw is not _MISSING:
            value = self.value(plain, raw, key)
        if var is not None and var in self.environ:
            value = self.variable(plain, self.environ[var], key, var)
        return value

    # -- values from the file (or overrides) ------------------------------------------------

    def value(self, hint: Any, value: Any, key: str) -> Any:
        """`value` checked against `hint` and converted (an integer to float, list to tuple)."""
        inner, optional = _optional(hint)
        if optional:
            return None if value is None else self.value(inner, value, key)
        origin = typing.get_origin(hint)
        if origin is Literal:
            if value in typing.get_args(hint):
                return value
            raise self.wrong(key, _expected(hint), value)
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, str):
            return value
        if hint is Path and isinstance(value, str | PurePath):
            return Path(value)
        if hint is bytes and isinstance(value, str | bytes):
            return value.encode() if isinstance(value, str) else value
        if _is_array(hint) and isinstance(value, list | tuple):
            item = _args(hint)[0]
            items = [self.item(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
            return list(items) if origin is list else tuple(items)
        if _is_map(hint) and isinstance(value, Mapping):
            item = _args(hint)[1]
            return {str(k): self.item(item, v, f"{key}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(hint):
            return self.table(hint, value, key + ".", None, {})
        if hint in (bool, int, float, str, Path, bytes) or _is_array(hint) or _is_map(hint):
            raise self.wrong(key, _expected(hint), value)
        raise TypeError(f"tomlconfig: {key}: unsupported type {hint!r}")

    def item(self, hint: Any, value: Any, key: str) -> Any:
        return self.relative(hint, self.value(_plain(hint), value, key))

    # -- values from the environment --------------------------------------------------------

    def variable(self, hint: Any, text: str, key: str, var: str) -> Any:
        """`text` of variable `var` as `hint`; refuses keys variables cannot set."""
        inner, optional = _optional(hint)
        if optional:
            unset = text.strip() == "" or (inner is bool and text.strip().lower() == "auto")
            return None if unset else self.variable(inner, text, key, var)
        if _is_array(hint) and _scalar(_args(hint)[0]):
            parts = [p.strip() for p in text.split(",") if p.strip()]
            items = [self.variable(_args(hint)[0], p, key, var) for p in parts]
            return items if typing.get_origin(hint) is list else tuple(items)
        if not _scalar(hint):
            raise ConfigError(f"{var} ({key}): this key cannot be set from the environment")
        word = text.strip().lower()
        try:
            if hint is bool:
                if word not in _TRUE + _FALSE:
                    raise ValueError(text)
                return word in _TRUE
            if hint is int:
                return int(text)
            if hint is float:
                return float(text)
            if hint is Path:
                return Path(text)
            if hint is bytes:
                return text.encode()
            if typing.get_origin(hint) is Literal and text not in typing.get_args(hint):
                raise ValueError(text)
        except ValueError:
            raise ConfigError(f"{var} ({key}): expected {_expected(hint)}, got {text!r}") from None
        return text

    # -- paths and messages -----------------------------------------------------------------

    def relative(self, hint: Any, value: Any) -> Any:
        """A relative path made absolute from the file's directory ("" and None stay)."""
        if not _is_relative(hint) or not value:
            return value
        path = self.base / value
        return path if isinstance(value, PurePath) else str(path)

    def wrong(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.prefix}{key}: expected {expected}, got {_describe(value)}")

    def unknown(self, keys: list[str], where: str, known: Any) -> ConfigError:
        paths = ", ".join(where + k for k in keys)
        table = where.rstrip(".") or "the top level"
        return ConfigError(
            f"{self.prefix}unknown key {paths} ({table} has: {', '.join(known) or 'no keys'})"
        )


# -- type inspection ------------------------------------------------------------------------


def _plain(hint: Any) -> Any:
    """`hint` without ``Annotated`` metadata."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _is_relative(hint: Any) -> bool:
    return typing.get_origin(hint) is Annotated and _RELATIVE in typing.get_args(hint)[1:]


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(hint, False)``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _args(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint)


def _is_array(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin is list or (origin is tuple and _args(hint)[1:] == (Ellipsis,))


def _is_map(hint: Any) -> bool:
    return typing.get_origin(hint) in (dict, Mapping)


def _scalar(hint: Any) -> bool:
    return hint in (bool, int, float, str, Path, bytes) or typing.get_origin(hint) is Literal


def _var(prefix: str | None, name: str) -> str | None:
    """The variable of key `name` in a table whose variables start with `prefix`."""
    return None if prefix is None else prefix + name.upper().replace("-", "_").replace(".", "_")


def _sub(var: str | None) -> str | None:
    """The variable prefix of a table whose own variable name is `var`."""
    return None if var is None else var + "_"


_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    Path: "path",
    bytes: "string",
}


def _expected(hint: Any, plural: bool = False) -> str:
    """What `hint` takes, in TOML's words: "integer", "array of strings", "table"..."""
    hint = _optional(_plain(hint))[0]
    s = "s" if plural else ""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if _is_array(hint):
        return f"array{s} of {_expected(_args(hint)[0], plural=True)}"
    if _is_map(hint):
        return f"table{s} of {_expected(_args(hint)[1], plural=True)}"
    return _TYPE_NAMES.get(hint, "table") + s


def _describe(value: Any) -> str:
    """A value as the file wrote it: ``string 'high'``, ``integer 3``, ``a table``."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    for kind, name in _TYPE_NAMES.items():
        if type(value) is kind:
            return f"{name} {value!r}"
    return f"{type(value).__name__} {value!r}"
