"""User-facing errors: one clear line naming the file and the problem, never a bare traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class BertscaleError(Exception):
    """An error caused by the user's input (config, data, checkpoint), reported as one line."""


class ConfigError(BertscaleError):
    """A config file or override is malformed, has an unknown key or a value of the wrong type."""


class DataError(BertscaleError):
    """Input data (dump, book, shard) is missing, empty, corrupt or malformed."""


class CheckpointError(BertscaleError):
    """A checkpoint is missing, incomplete or does not match the model."""


def run_cli(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a BertscaleError becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except BertscaleError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
