"""Typed configuration: dataclasses loaded from YAML with ``key=value`` overrides.

Every component owns a small dataclass; a run's config is a dataclass whose fields are those
components. ``load_config(RunConfig, "configs/x.yaml", ["optim.lr=1e-4"])`` reads the file,
applies the overrides (dotted paths, values parsed as YAML scalars) and checks every key and
type, raising :class:`ConfigError` with the dotted path of the first bad field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` converted to the annotated type ``tp``, or raise naming ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} does not fit {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {
            _coerce(k, kt, f"{path}.{k}"): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "1e-4" as a string; accept any float literal.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path, got {value!r}")
        return Path(value)
    return value


def _build(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without default is missing
        raise ConfigError(f"{path or cls.__name__}: {e}") from e
    return obj


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build ``cls`` from a nested mapping, checking keys and types."""
    return _build(cls, data or {})


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass, with paths as strings (YAML-safe)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()
) -> T:
    """Load ``cls`` from a YAML file (optional) and ``key=value`` overrides.

    Raises :class:`ConfigError` naming the file or the dotted key that is wrong.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded or {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def type_name(tp: Any) -> str:
    """A config field's type as a user reads it: ``int``, ``float | null``, ``never | auto``."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in get_args(tp))
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    return "any" if tp is Any else getattr(tp, "__name__", str(tp))


def _yaml_value(value: Any, limit: int = 60) -> str:
    value = to_dict(value)
    if isinstance(value, str) and (not value or "\n" in value or yaml.safe_load(value) != value):
        text = json.dumps(value, ensure_ascii=False)  # JSON strings are YAML, escapes on one line
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
        text = text.strip().removesuffix("...").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summary(cls: type) -> str:
    """The first sentence of ``cls``'s docstring, on one line ("" without one)."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses put in place of none
        return ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".") + "." if first else ""


def describe_config(cls: type, indent: int = 0) -> str:
    """Every key of the config dataclass ``cls`` as YAML with its default, its type in a comment,
    sections nested (each headed by the first sentence of its docstring). For ``--help``."""
    hints = get_type_hints(cls)
    pad = " " * indent
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            summary = _summary(tp)
            lines.append(
                f"{pad}{f.name}:".ljust(40) + f"  # {summary}" if summary else f"{pad}{f.name}:"
            )
            lines.append(describe_config(tp, indent + 2))
            continue
        if f.default is not dataclasses.MISSING:
            default = _yaml_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _yaml_value(f.default_factory())
        else:
            default = "(required)"
        lines.append(f"{pad}{f.name}: {default}".ljust(40) + f"  # {type_name(tp)}")
    return "\n".join(lines)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder's record of what ran)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def split_config_args(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """Split ``[--config PATH] key=value ... --flag ...`` into (config, overrides, rest)."""
    config = None
    overrides: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return config, overrides, rest
