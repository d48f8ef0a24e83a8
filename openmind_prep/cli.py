"""The ``openmind-prep`` command line. Each sub-command lives in the module that does the work;
heavy imports (torch, dask, zarr, SimpleITK) happen inside the commands so ``--help`` is fast."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="openmind-prep")
def main() -> None:
    """Prepare OpenMind (114k brain MRI) for self-supervised 3D pretraining."""


def _register() -> None:
    # One line per command; each module owns its command.
    from openmind_prep.demo import demo_command
    from openmind_prep.plan import plan_command
    from openmind_prep.hub import download_command
    from openmind_prep.preprocess import preprocess_command
    from openmind_prep.sample import sample_command
    from openmind_prep.stream import run_command
    from openmind_prep.verify import verify_command
    from openmind_prep.show import show_command
    from openmind_prep.shards import shard_command

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
