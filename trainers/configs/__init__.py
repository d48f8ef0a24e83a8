"""Trainer config files: small TOML files of ``name = value`` overrides, parsed, never executed.

A name is a flag's name with ``_`` for ``-`` (``warmup_steps = 2500`` for ``--warmup-steps``)::

    arch = "tiny"
    patch_size = [32]       # like --patch-size 32
    contrastive = false     # like --no-contrastive

``--config`` takes a file path or the name of a file shipped here (``tiny_cpu``, ``tiny_cpu_mae``, the two
stages of each architecture ``resenc_l_mae`` → ``resenc_l_cva`` and ``primus_m_mae`` → ``primus_m_cva``,
the AE rung ``resenc_l_ae``, ``mae_only``), from any folder. Repeated ``--config`` files merge in order (a later
file's value wins) and flags given on the command line win over all of them. Unknown names and
values of the wrong type are refused with a message naming the file.

>>> sorted(names())  # doctest: +NORMALIZE_WHITESPACE
['finetune_primus_m', 'finetune_resenc_l', 'finetune_tiny_cpu', 'mae_only', 'primus_m_cva', 'primus_m_mae', 'resenc_l_ae', 'resenc_l_cva',
 'resenc_l_mae', 'tiny_cpu', 'tiny_cpu_mae']
>>> read(find("tiny_cpu"))["arch"]
'tiny'
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

SUFFIX = ".toml"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the reason."""


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """The configs shipped with the package (``--config NAME``)."""
    return sorted(p.stem for p in _folder().glob(f"*{SUFFIX}"))


def find(spec: str | Path) -> Path:
    """A config's path: ``spec`` itself when it is a file, else the shipped config of that name.

    >>> find("primus_m_cva").name
    'primus_m_cva.toml'
    """
    path = Path(spec)
    if path.is_file():
        return path
    shipped = _folder() / (path.name if path.suffix == SUFFIX else path.name + SUFFIX)
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    if path.suffix == ".py" and path.stem in names():  # the Python config files of earlier versions
        raise ConfigError(f"{spec}: no such file; trainer configs are TOML now: --config {path.stem}")
    close = difflib.get_close_matches(path.stem, names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{spec}: no such config file or shipped config{hint} (shipped: {', '.join(names())})")


def read(path: Path) -> dict[str, Any]:
    """The ``name = value`` pairs of a TOML config file (nothing in it is executed).

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "bad.toml"
    >>> _ = bad.write_text("import os; os.system('touch pwned')\\n")
    >>> read(bad)
    Traceback (most recent call last):
    ...
    trainers.configs.ConfigError: ...bad.toml: not a TOML config (name = value lines): ...
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    except tomllib.TOMLDecodeError as err:
        hint = " (trainer configs are TOML, not Python: `contrastive = false`)" if Path(path).suffix == ".py" else ""
        raise ConfigError(f"{path}: not a TOML config (name = value lines): {err}{hint}") from None
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    if tables:
        raise ConfigError(f"{path}: sections are not settings: {tables}")
    return data


def _coerce(action: argparse.Action, value: Any, path: Path) -> Any:
    """``value`` as the flag behind ``action`` would have given it, or :class:`ConfigError`."""
    name = action.dest
    if action.nargs == 0:  # a switch: --flag / --no-flag, store_true
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {name} must be true or false, not {value!r}")
        return value
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]  # patch_size = 32 reads as [32]
        if not values:
            raise ConfigError(f"{path}: {name} must not be empty")
        return [_scalar(action, v, path) for v in values]
    return _scalar(action, value, path)


def _scalar(action: argparse.Action, value: Any, path: Path) -> Any:
    kind = action.type or str
    ok = {int: (int,), float: (int, float)}.get(kind, (str,))
    if isinstance(value, bool) or not isinstance(value, ok):
        raise ConfigError(f"{path}: {action.dest} must be {getattr(kind, '__name__', 'text')}, not {value!r}")
    value = kind(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{path}: {action.dest} must be one of {list(action.choices)}, not {value!r}")
    return value


def merge(parser: argparse.ArgumentParser, specs: Sequence[str | Path]) -> dict[str, Any]:
    """Settings of the config files ``specs`` merged in order (later wins), checked against ``parser``.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--lr", type=float, default=1.0)
    >>> _ = p.add_argument("--arch", default="tiny")
    >>> merge(p, ["tiny_cpu"])
    Traceback (most recent call last):
    ...
    trainers.configs.ConfigError: ...tiny_cpu.toml: unknown setting(s) ['align_size', ...]
    """
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "version", "config", "dry_run")}
    merged: dict[str, Any] = {}
    for spec in specs:
        path = find(spec)
        data = read(path)
        unknown = sorted(k for k in data if k not in actions)
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown setting(s) {unknown}{hint}")
        merged.update({k: _coerce(actions[k], v, path) for k, v in data.items()})
    return merged


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the merged ``--config`` files as defaults (a bad file: one usage line, exit 2); for
    parsers with defaults (``trainers.finetune``). ``trainers.cli_args.given_settings`` is the trainer's way.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--config", action="append", default=[])
    >>> _ = p.add_argument("--arch", default="resenc-l")
    >>> parse(p, ["--config", "tiny_cpu"]).arch
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    first = parser.parse_args(argv)
    try:
        parser.set_defaults(**merge(parser, first.config))
    except ConfigError as err:
        parser.error(str(err))
    return parser.parse_args(argv)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines end with the default, where there is one (not for None or an empty list): ``defaults[dest]``
    when the parser sets ``defaults`` (``trainers.cli_args``: flags without argparse defaults), else the flag's."""

    defaults: Any = None

    def _get_help_string(self, action: argparse.Action) -> str:
        value = action.default if self.defaults is None else self.defaults.get(action.dest)
        if value is None or value == [] or value is argparse.SUPPRESS or not action.help or "%(default)" in action.help:
            return action.help or ""
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        return f"{action.help} (default: {value})"
