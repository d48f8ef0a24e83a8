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
