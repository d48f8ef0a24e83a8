"""``openmind-prep shard``: a store's images as WebDataset tar shards."""

from __future__ import annotations

import errno
from pathlib import Path

import click



@click.command("shard")
@click.argument("store", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the tar shards and index.json / index.parquet.")
@click.option("--shard-size", default="auto", show_default=True,
              help="Target bytes per shard, e.g. 1GB (larger shards mean fewer requests on object storage); "
                   "auto: at least 16 shards (one per image below 16 images) so several loader workers "
                   "can stream a small store, at most 1 GB each.")
@click.option("--prefix", default="shard", show_default=True, help="Shard file name prefix.")
@click.option("--replace", is_flag=True,
              help="Remove shards in --out that hold images this store no longer has as they were (shards of "
                   "another store, or of an earlier preprocessing); without it such shards are refused.")
def shard_command(store: Path, out: Path, shard_size: str, prefix: str, replace: bool) -> None:
    """Write the images of a preprocessed STORE as WebDataset tar shards (resumable).

    Each image is checked against its manifest checksum first: a damaged one is named, left out, and
    the command exits 1 after packing the rest. Holds the store's run lock (no preprocess meanwhile).
    """
    from openmind_prep.shards.writer import merge_index, parse_size, write_shards
    from openmind_prep.store.store import Store

    try:
        size = parse_size(shard_size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shard-size") from e
    damaged: list[str] = []
    try:
        with Store.open(store).reading("shard"):
            shards = write_shards(store, out, shard_size=size, prefix=prefix, replace=replace, damaged=damaged)
        index = merge_index(out)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise click.ClickException(f"{out}: disk full while writing shards ({e.strerror}); finished shards are "
                                   "kept: free space and re-run the same command to resume") from e
    for problem in damaged:
        click.echo(f"DAMAGED {problem}", err=True)
    click.echo(f"{len(shards)} shards ({sum(s.samples for s in shards)} samples) under {out}; "
               f"index: {index['samples']} samples in {len(index['shards'])} shards")
    if damaged:
        raise click.ClickException(f"{len(damaged)} damaged image(s) left out (listed above); "
                                   f"openmind-prep verify {store} lists every problem")
