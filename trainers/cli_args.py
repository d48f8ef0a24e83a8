"""The trainers' command lines: one-line errors, no abbreviations, ``--config`` files, defaults in ``--help``.

Shared by ``python -m trainers.cva`` and any other trainer command (a fine-tuning one): build the flags on
:class:`ArgumentParser` (every default :data:`argparse.SUPPRESS`, so only what was given is seen), then
:func:`given_settings` returns the settings given explicitly: the ``--config`` files merged in order
(:mod:`trainers.configs`), flags over them. A usage error prints one line naming the flag, file or key (with
a close match where there is one) and exits 2, without the usage dump.

>>> p = ArgumentParser("demo", defaults={"steps": 10})
>>> _ = p.add_argument("--steps", type=int, help="Optimiser steps.")
>>> _ = p.add_argument("--config", action="append")
>>> given_settings(p, ["--steps", "3"])
{'steps': 3}
>>> "(default: 10)" in p.format_help()
True
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, Mapping, Sequence

from trainers import configs
from trainers.configs import HelpFormatter

__all__ = ["ArgumentParser", "HelpFormatter", "given_settings", "close_match"]

#: Settings that say the same thing two ways: a later layer (config file, then flags) giving one drops the other.
PAIRS = {"batch_size": "global_batch_size", "global_batch_size": "batch_size"}


def close_match(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, else ``""``.

    >>> close_match("tiny-cpu", ["tiny_cpu", "resenc_l_cva"])
    " (did you mean 'tiny_cpu'?)"
    """
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` without abbreviations, defaults suppressed, one-line errors (exit 2) and "did you mean"."""

    def __init__(self, prog: str, defaults: Mapping[str, Any] | None = None, **kwargs: Any):
        self.help_defaults = dict(defaults or {})
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(prog, allow_abbrev=False, argument_default=argparse.SUPPRESS, **kwargs)

    def _get_formatter(self) -> argparse.HelpFormatter:
        formatter = super()._get_formatter()
        formatter.defaults = self.help_defaults
        return formatter

    def flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            words = message.split(":", 1)[1].split()
            flag = next((w.split("=")[0] for w in words if w.startswith("--")), "")
            message += close_match(flag, self.flags()) if flag else ""
        print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def given_settings(parser: ArgumentParser, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The settings given explicitly: ``--config`` files merged in order, then the flags (``config`` itself
    dropped). A bad file, name or key exits 2 with one line."""
    flags = vars(parser.parse_args(argv))
    specs = flags.pop("config", None) or []
    try:
        merged: dict[str, Any] = {}
        for spec in specs:
            layer = configs.merge(parser, [spec])
            _drop_pairs(merged, layer)
            merged.update(layer)
    except configs.ConfigError as err:
        parser.error(str(err))
    _drop_pairs(merged, flags)
    return {**merged, **flags}


def _drop_pairs(below: dict, layer: Mapping[str, Any]) -> None:
    for key in layer:
        if key in PAIRS:
            below.pop(PAIRS[key], None)
