"""The ``openmind-prep`` command line: the shell that composes the three layers. Each sub-command
has a module in this package (click lives only here); the library modules it calls do the work;
heavy imports (torch, dask, zarr, SimpleITK) happen inside the commands so ``--help`` is fast."""

from __future__ import annotations

import errno
import sys

import click


def user_error(error: BaseException) -> str | None:
    """The one-line message for an error caused by the input or the machine (a bad CSV, a file that
    cannot be fetched, a full disk, a missing or unreadable file), or None for anything else.

    >>> import errno
    >>> user_error(OSError(errno.ENOSPC, "No space left on device", "/s/x.tar"))
    '/s/x.tar: disk full (No space left on device); free space and re-run the same command to resume'
    >>> user_error(KeyError("x")) is None
    True
    """
    from openmind_prep.sources.metadata import MetadataError
    from openmind_prep.core.paths import InputError
    from openmind_prep.sources.retry import DownloadError
    from openmind_prep.store.store import StoreError

    if isinstance(error, (MetadataError, DownloadError, InputError, StoreError)):
        return str(error)
    arrow = sys.modules.get("pyarrow")  # a damaged manifest.parquet: Arrow's message names the file
    if arrow is not None and isinstance(error, arrow.ArrowException) and not isinstance(error, MemoryError):
        return " ".join(str(error).split())
    if isinstance(error, OSError):
        where = error.filename if error.filename is not None else "(no file named)"
        what = error.strerror or str(error) or type(error).__name__
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{where}: disk full ({what}); free space and re-run the same command to resume"
        return f"{where}: {what}"
    return None


class _NoPandas:
    """A ``sys.meta_path`` finder that refuses ``pandas`` (held there by :func:`arrow_without_pandas`)."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ImportError("pandas is not imported for pyarrow's conversions here", name=name)
        return None


def arrow_without_pandas() -> bool:
    """Tell pyarrow, before its first conversion, that this process has no pandas: a Python-to-Arrow
    conversion (``Table.from_pylist`` of manifest rows) otherwise imports pandas (~0.2 s, a tenth of a
    small job's start-up) only to ask whether its input is a pandas object, and no command uses pandas.
    pyarrow asks once and remembers the answer; ``import pandas`` is refused for that one question,
    so ``to_pandas()`` and everything else still import it when called. Returns whether pyarrow was
    told; False where pandas is already imported or pyarrow's shim is not the one this was written for.

    >>> import subprocess, sys
    >>> code = ("import sys, pyarrow as pa; from openmind_prep.cli import arrow_without_pandas as f; "
    ...         "t = f(); pa.Table.from_pylist([{'a': 1}], schema=pa.schema([('a', pa.int64())])); "
    ...         "print(t, 'pandas' in sys.modules, type(pa.table({'a': [1]}).to_pandas()).__name__)")
    >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    ['True', 'False', 'DataFrame']
    """
    if "pandas" in sys.modules:
        return False
    import pyarrow

    shim = getattr(pyarrow.lib, "_pandas_api", None)
    if shim is None or not hasattr(type(shim), "have_pandas"):  # on the class: the property asks
        return False
    sys.meta_path.insert(0, _NoPandas)  # type: ignore[arg-type]
    try:
        return not shim.have_pandas  # pyarrow's one soft check: the ImportError is remembered as "no pandas"
    except ImportError:
        return False
    finally:
        sys.meta_path.remove(_NoPandas)  # type: ignore[arg-type]


class _Shell(click.Group):
    """The ``openmind-prep`` group: an error caused by the input or the machine ends the command with
    one line naming the file and the reason (exit 1), never a traceback; other errors are bugs and
    keep theirs."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - sorted by user_error
            message = user_error(e)
            if message is None:
                raise
            raise click.ClickException(message) from e


@click.group(cls=_Shell, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="openmind-prep")
def main() -> None:
    """Prepare OpenMind (114k brain MRI) for self-supervised 3D pretraining."""
    arrow_without_pandas()  # runs before a sub-command, never for the group's --help


def _register() -> None:
    # One line per command; each module owns its command.
    from openmind_prep.cli.demo import demo_command
    from openmind_prep.cli.download import download_command
    from openmind_prep.cli.plan import plan_command
    from openmind_prep.cli.preprocess import preprocess_command
    from openmind_prep.cli.run import run_command
    from openmind_prep.cli.sample import sample_command
    from openmind_prep.cli.shard import shard_command
    from openmind_prep.cli.show import show_command
    from openmind_prep.cli.verify import verify_command

    main.add_command(demo_command)
    main.add_command(plan_command)
    main.add_command(download_command)
    main.add_command(preprocess_command)
    main.add_command(sample_command)
    main.add_command(run_command)
    main.add_command(verify_command)
    main.add_command(show_command)
    main.add_command(shard_command)


_register()
