"""Codec options for the stored float16 arrays: bytes vs nnssl's blosc2 file and decode time per volume.

Run after ``benchmarks/loading.py --work DIR`` (it builds the store and the reference files there):

    PYTHONPATH=. .venv-bench/bin/python benchmarks/codecs.py --work DIR [--repeat 7]

Every option encodes each 64³ chunk of the stored volumes (edge chunks padded with the fill value,
as zarr does) with numcodecs' blosc (the codec zarr's ``BloscCodec`` runs), one blosc thread, and
decodes all chunks of a volume into one reused buffer (as ``openmind_prep.store.region_read`` does).
Printed per option: bytes / the reference's ``.b2nd`` (mean and worst volume; shard index
included), decode ms per volume (min of ``--repeat``), encode ms per volume, and the read ratio
predicted from ``--read-ms`` (our measured read) and ``--ref-ms`` (the reference's): the decode
time of today's codec replaced by the option's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CHUNK = 64


def chunks_of(volume: np.ndarray) -> list[np.ndarray]:
    """The volume's 64³ chunks in C order, edge chunks padded with zeros (zarr's fill)."""
    grid = [range(0, n, CHUNK) for n in volume.shape]
    out = []
    for z in grid[0]:
        for y in grid[1]:
            for x in grid[2]:
                part = volume[z:z + CHUNK, y:y + CHUNK, x:x + CHUNK]
                chunk = np.zeros((CHUNK,) * 3, volume.dtype)
                chunk[:part.shape[0], :part.shape[1], :part.shape[2]] = part
                out.append(chunk)
    return out


def measure(volumes: list[list[np.ndarray]], ref_bytes: list[int], cname: str, clevel: int, shuffle: int,
            blocksize: int, typesize: int, repeat: int) -> dict:
    import numcodecs.blosc as blosc

    blosc.use_threads = False
    sizes, dec, enc = [], [], []
    for chunks in volumes:
        t = time.process_time()
        encoded = [blosc.compress(np.ascontiguousarray(c).view(f"u{typesize}") if typesize != c.itemsize else c,
                                  cname.encode(), clevel, shuffle, blocksize) for c in chunks]
        enc.append(time.process_time() - t)
        sizes.append(sum(len(e) for e in encoded) + 16 * len(encoded) + 4)
        scratch = np.empty_like(chunks[0])
        best = float("inf")
        for _ in range(repeat):
            t = time.process_time()
            for e in encoded:
                blosc.decompress(e, scratch)
            best = min(best, time.process_time() - t)
        dec.append(best)
    ratio = np.array(sizes, float) / np.array(ref_bytes, float)
    return {"bytes": float(np.sum(sizes) / np.sum(ref_bytes)), "worst": float(ratio.max()),
            "decode_ms": 1e3 * float(np.mean(dec)), "encode_ms": 1e3 * float(np.mean(enc))}


OPTIONS = [  # (cname, clevel, shuffle 0 none / 1 byte / 2 bit, blosc block bytes (0 auto), typesize)
    ("zstd", 5, 1, 1 << 19, 2),  # today's codec: zstd-5, byte shuffle, one block per chunk
    ("zstd", 1, 1, 1 << 19, 2), ("zstd", 3, 1, 1 << 19, 2), ("zstd", 9, 1, 1 << 19, 2),
    ("zstd", 5, 2, 1 << 19, 2), ("zstd", 5, 1, 0, 2), ("zstd", 5, 1, 1 << 19, 4),
    ("lz4", 5, 1, 1 << 19, 2), ("lz4", 9, 1, 1 << 19, 2), ("lz4", 5, 2, 1 << 19, 2),
    ("lz4hc", 1, 1, 1 << 19, 2), ("lz4hc", 4, 1, 1 << 19, 2), ("lz4hc", 6, 1, 1 << 19, 2),
    ("lz4hc", 9, 1, 1 << 19, 2), ("lz4hc", 9, 2, 1 << 19, 2), ("lz4hc", 9, 1, 0, 2),
    ("lz4hc", 9, 1, 1 << 19, 4),
    ("blosclz", 9, 1, 1 << 19, 2), ("zlib", 1, 1, 1 << 19, 2),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="The --work folder of benchmarks/loading.py.")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--read-ms", type=float, default=None, help="Our read per volume now (ms), for the prediction.")
    parser.add_argument("--ref-ms", type=float, default=None, help="The reference's read per volume (ms).")
    parser.add_argument("--only", default=None, help="Comma-separated cname-clevel-shuffle to run (default: all).")
    args = parser.parse_args()

    from openmind_prep.store.manifest import read_manifest
    from openmind_prep.store.region_read import open_array

    store = args.work / "store_float16"
    rows = [r for r in read_manifest(store).to_pylist() if r["status"] == "ok"]
    volumes = [chunks_of(open_array(store / r["zarr_path"])[...]) for r in rows]
    ref_bytes = [(args.work / "reference" / f"case{i}.b2nd").stat().st_size for i in range(len(rows))]
    print(f"{len(rows)} volumes, {sum(map(len, volumes))} chunks of 64³ float16; reference bytes {ref_bytes}")
    print(f"{'option':28s} {'bytes':>6s} {'worst':>6s} {'decode ms':>10s} {'encode ms':>10s} {'pred. read':>10s}")
    base = None
    for cname, clevel, shuffle, blocksize, typesize in OPTIONS:
        name = f"{cname}-{clevel} {'none byte bit'.split()[shuffle]} blk{blocksize >> 10}K ts{typesize}"
        if args.only and f"{cname}-{clevel}-{shuffle}" not in args.only.split(","):
            continue
        m = measure(volumes, ref_bytes, cname, clevel, shuffle, blocksize, typesize, args.repeat)
        base = m["decode_ms"] if base is None else base
        pred = ""
        if args.read_ms and args.ref_ms:
            pred = f"{args.ref_ms / (args.read_ms - base + m['decode_ms']):9.2f}x"
        print(f"{name:28s} {m['bytes']:6.3f} {m['worst']:6.3f} {m['decode_ms']:10.2f} {m['encode_ms']:10.1f} {pred:>10s}",
              flush=True)


if __name__ == "__main__":
    main()
