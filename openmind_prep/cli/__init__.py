"""The ``openmind-prep`` command line: the shell that composes the three layers. Each sub-command
has a module in this package (click lives only here); the library modules it calls do the work;
heavy imports (torch, dask, zarr, SimpleITK) happen inside the commands so ``--help`` is fast."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
