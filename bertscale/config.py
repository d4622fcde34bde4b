"""Typed configs: dataclass defaults < YAML file < ``key=value`` overrides; unknown keys rejected.

Every job (pipeline, pretrain, finetune) describes its settings as one tree of dataclasses and
loads it with :func:`load_config`. Values are checked against the type hints and against the
class's ``RANGES`` (``{"lr": "(0, inf)", "dropout": "[0, 1)"}``), so a typo, a wrong type or an
out-of-range number fails at start-up with a message naming the file and the key, not an hour in.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bertscale.atomic import atomic_write_text
from bertscale.errors import ConfigError
from bertscale.secrets import redact

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        values = read_yaml(path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-4)")
        _set_dotted(values, key.strip(), _parse_scalar(raw))
    if overrides:
        source += " + overrides"
    return from_dict(cls, values, source=source)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({_first_line(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], values: Mapping[str, Any], source: str = "config", _prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a nested mapping, type-checking every value."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: '{_prefix.rstrip('.') or '<root>'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            suggestion = f" (did you mean '{_prefix}{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{source}: unknown key '{_prefix}{key}'{suggestion}")
        factory = fields[key].default_factory
        if dataclasses.is_dataclass(hints[key]) and factory is not dataclasses.MISSING:
            value = _merged(_init_values(factory()), value)  # a section's own defaults stay
        kwargs[key] = _coerce(hints[key], value, source, f"{_prefix}{key}")
    for name, field in fields.items():
        nested = dataclasses.is_dataclass(hints[name])
        if name not in kwargs and nested and field.default_factory is dataclasses.MISSING:
            kwargs[name] = from_dict(hints[name], {}, source, f"{_prefix}{name}.")
    for name, interval in getattr(cls, "RANGES", {}).items():  # before __post_init__ uses them
        value = kwargs.get(name, getattr(fields[name], "default", None))
        _check_range(value, interval, source, f"{_prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {_prefix.rstrip('.') or cls.__name__}: {err}") from None


def _init_values(obj: Any) -> dict[str, Any]:
    """The constructor arguments of a dataclass instance, nested sections as dicts."""
    return {
        f.name: _init_values(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else _plain(v)
        for f in dataclasses.fields(obj)
        if f.init
    }


def _merged(defaults: dict[str, Any], given: Any) -> Any:
    if not isinstance(given, Mapping):
        return given  # from_dict reports it
    out = dict(defaults)
    for key, value in given.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def in_range(value: Any, interval: str) -> bool:
    """``interval`` like ``"[0, 1)"`` or ``"(0, inf)"``; None (an unset optional value) is in
    range; a number must be finite; a tuple (e.g. Adam's betas) is checked item by item."""
    if value is None or value is dataclasses.MISSING:
        return True
    if isinstance(value, list | tuple):
        return all(in_range(item, interval) for item in value)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return False
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    above = lo < value if interval[0] == "(" else lo <= value
    return above and (value < hi if interval[-1] == ")" else value <= hi)


def _check_range(value: Any, interval: str, source: str, key: str) -> None:
    if not in_range(value, interval):
        raise ConfigError(f"{source}: '{key}' must be in {interval}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain (YAML-serialisable) dict of a config tree, with URI credentials masked: it is what
    every job saves (config.yaml, manifest.json) and logs to MLflow."""
    return redact(_plain(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls: type, _prefix: str = "") -> list[str]:
    """One ``key: type = default`` line per leaf of a config tree (what ``--help`` prints)."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, f"{_prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        interval = getattr(cls, "RANGES", {}).get(f.name)
        bounds = f"  in {interval}" if interval else ""
        lines.append(f"{_prefix}{f.name}: {_type_name(tp)} = {_plain(default)!r}{bounds}")
    return lines


def split_cli(
    argv: Sequence[str], cls: type | None = None, usage: str | None = None
) -> tuple[str | None, list[str]]:
    """Split ``--config PATH key=value ...`` into the path and the overrides.

    ``--local_rank=N`` (added by the deepspeed launcher) is accepted and ignored; the rank is read
    from the environment instead. ``-h``/``--help`` prints ``usage`` and every key of ``cls``, then exits.
    """
    if {"-h", "--help"} & set(argv):
        print(usage or "usage: --config PATH [key=value ...]")
        if cls is not None:
            print("\nkeys (defaults < YAML < key=value overrides):")
            print("\n".join(f"  {line}" for line in describe(cls)))
        raise SystemExit(0)
    path: str | None = None
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a path")
            path = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("--local_rank") or arg.startswith("--local-rank"):
            if "=" not in arg:
                i += 1  # value given as the next argument
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}: use --config PATH and key=value overrides")
        i += 1
    return path, overrides


# --- internals -------------------------------------------------------------------------------


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    node = values
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a section")
        node = child
    node[leaf] = value


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")  # list[str], Literal['a', 'b'], int | None


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, source, key)
            except ConfigError:
                continue
        raise bad
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, f"{key}.")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise bad
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise bad
    raise ConfigError(f"{source}: '{key}' has unsupported type {_type_name(tp)}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
