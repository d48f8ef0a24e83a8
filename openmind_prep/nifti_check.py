"""Validate a NIfTI file from its header and raw bytes before SimpleITK reads it.

SimpleITK reads a truncated ``.nii``/``.nii.gz`` without error (missing voxels become 0) and its
NIfTI reader turns NaN/±inf into 0, so those checks must look at the bytes themselves. The file is
recognised by content (gzip magic, header size field), not by its name, as SimpleITK's znzlib does.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["InputError", "check_nifti"]

_CHUNK = 8 << 20  # bytes per read while streaming the voxel data


class InputError(ValueError):
    """A bad input file: ``str(e) == f"{path}: {reason}"``.

    >>> str(InputError("a/b.nii.gz", "file not found"))
    'a/b.nii.gz: file not found'
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # picklable across Dask workers
        return (type(self), (str(self.path), self.reason))


def _header(path: Path, raw: bytes) -> nib.Nifti1Header:
    if len(raw) < 348:
        raise InputError(path, f"not a NIfTI file (only {len(raw)} bytes, a NIfTI header needs 348)")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizes:
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    elif 540 in sizes and len(raw) >= 540:
        hdr = nib.Nifti2Header.from_fileobj(io.BytesIO(raw[:540]), check=False)
    else:
        raise InputError(path, "not a NIfTI file (bad header size field)")
    magic = bytes(hdr["magic"]).rstrip(b"\0")
    if magic in (b"ni1", b"ni2"):
        raise InputError(path, "NIfTI header/image pair (.hdr/.img) is not supported; use a single .nii file")
    if magic not in (b"n+1", b"n+2"):
        raise InputError(path, f"not a NIfTI file (magic {magic!r})")
    return hdr


def _geometry(path: Path, hdr: nib.Nifti1Header) -> tuple[tuple[int, ...], np.dtype]:
    dim = [int(d) for d in hdr["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(path, f"invalid NIfTI header (dim[0] = {ndim})")
    shape = tuple(dim[1:ndim + 1])
    if ndim < 3:
        raise InputError(path, f"{ndim}-D image of shape {shape}, expected a 3-D volume")
    if any(n <= 0 for n in shape):
        raise InputError(path, f"empty image: zero-size dimension in shape {shape}")
    volumes = int(np.prod(shape[3:], dtype=np.int64))
    if volumes > 1:
        raise InputError(path, f"{ndim}-D image with {volumes} volumes (shape {shape}); expected one 3-D volume")
    spacing = [float(p) for p in hdr["pixdim"][1:4]]
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(path, f"invalid voxel spacing (pixdim[1:4] = {spacing}); must be finite and > 0")
    try:
        dtype = hdr.get_data_dtype()
    except Exception:  # noqa: BLE001 - nibabel raises several types for unknown codes
        raise InputError(path, f"unsupported NIfTI datatype code {int(hdr['datatype'])}") from None
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise InputError(path, f"unsupported voxel type {dtype} (expected scalar integers or floats)")
    return shape, dtype


def _read_exact(stream, n: int) -> bytes:
    return stream.read(n) if n > 0 else b""


def check_nifti(path: str | Path, *, max_bytes: int | None = None) -> None:
    """Raise :class:`InputError` unless ``path`` is a complete, finite, single-volume 3-D NIfTI.

    ``max_bytes`` bounds the decoded float32 volume (``voxels * 4``), checked before the data
    are read.

    >>> check_nifti("no/such/file.nii.gz")
    Traceback (most recent call last):
    openmind_prep.nifti_check.InputError: no/such/file.nii.gz: file not found
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as stream:
            raw = _read_exact(stream, 540)
            hdr = _header(path, raw)
            shape, dtype = _geometry(path, hdr)
            voxels = int(np.prod(shape, dtype=np.int64))
            if max_bytes is not None and voxels * 4 > max_bytes:
                raise InputError(path, f"decoded volume would need {voxels * 4:,} bytes ({voxels:,} voxels × 4, "
                                       f"shape {shape}), above the limit of {max_bytes:,} bytes")
            header_size = int(hdr["sizeof_hdr"])
            offset = max(int(hdr["vox_offset"]), header_size + 4)
            skip = _read_exact(stream, offset - len(raw))
            data_head = raw[offset:] if len(raw) > offset else b""
            if len(raw) + len(skip) < offset:
                raise InputError(path, f"truncated: file ends inside the header/extensions (before byte {offset})")
            _scan_data(path, stream, data_head, voxels * dtype.itemsize, dtype)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(path, f"truncated or corrupt gzip stream ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise InputError(path, f"cannot read file ({type(e).__name__}: {e})") from None


def _scan_data(path: Path, stream, head: bytes, nbytes: int, dtype: np.dtype) -> None:
    """Count the voxel bytes present and, for float types, the non-finite values among them."""
    bad, carry = 0, b""
    head = head[:nbytes]
    got, remaining = len(head), nbytes - len(head)
    chunk = head
    while True:
        if dtype.kind == "f":
            buf = carry + chunk
            usable = len(buf) - len(buf) % dtype.itemsize
            bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:usable], dtype=dtype))))
            carry = buf[usable:]
        if remaining <= 0:
            break
        chunk = _read_exact(stream, min(_CHUNK, remaining))
        if not chunk:
            break
        got += len(chunk)
        remaining -= len(chunk)
    if got < nbytes:
        raise InputError(path, f"truncated: {got:,} of {nbytes:,} voxel data bytes present "
                               f"(SimpleITK would silently fill the rest with zeros)")
    if bad:
        raise InputError(path, f"{bad:,} NaN/inf voxel values (SimpleITK would silently turn them into 0)")
