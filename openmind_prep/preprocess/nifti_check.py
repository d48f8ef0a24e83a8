"""Read a NIfTI file's voxels exactly as SimpleITK would, in one pass, refusing what it would get wrong.

SimpleITK reads a truncated ``.nii``/``.nii.gz`` without error (missing voxels become 0) and its
NIfTI reader turns NaN/±inf into 0, so those checks must look at the bytes themselves. Rather than
check the bytes and then let SimpleITK decompress the file a second time, :func:`read_voxels`
decompresses once (ISA-L's igzip when installed: ~2x zlib), checks, and returns the voxels;
:func:`itk_pixels` applies SimpleITK's intensity scaling to them. Where the voxel data start is
SimpleITK's rule (measured on SimpleITK 2.5): byte ``max(int(vox_offset), 348)`` — so a
``vox_offset`` below 352 makes SimpleITK read the header's extension flag as voxels and a value at
or above 2**31 wraps to byte 348. Both are refused here (the image would be stored shifted), as is
NIfTI-2, which SimpleITK cannot read. The gap up to ``vox_offset`` is skipped in bounded chunks, and
with ``max_bytes`` nothing beyond the budget is ever decompressed. The file is recognised by content
(gzip magic, header size field), not by its name, as SimpleITK's znzlib does.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass

from openmind_prep.core.paths import InputError
from pathlib import Path

import nibabel as nib
import numpy as np

try:  # ISA-L's gzip: the same bytes, about twice as fast as zlib here (benchmarks/NOTES.md)
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a dependency; plain gzip still works
    import gzip as _gzip

    _isal_error = zlib.error

_GZIP_ERRORS = (EOFError, zlib.error, _isal_error, _gzip.BadGzipFile)

__all__ = ["InputError", "NiftiLayout", "check_nifti", "itk_pixels", "read_voxels"]

_CHUNK = 1 << 20  # bytes per read while skipping the gap before the voxel data
_SITK_OFFSET_LIMIT = 2**31  # SimpleITK converts vox_offset to a C int: larger values wrap to 348
_DTYPES = "u1 i1 u2 i2 u4 i4 u8 i8 f4 f8".split()  # the scalar types SimpleITK reads




@dataclass(frozen=True)
class NiftiLayout:
    """Where and how the voxels lie: ``shape`` (x, y, z, ...) as in the header, on-disk ``dtype``,
    byte ``offset`` of the first voxel in the (decompressed) file (``int(vox_offset)``; -1: not
    addressable), and SimpleITK's scaling
    (``slope`` 1 and ``inter`` 0 when it does not rescale)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    vox_offset: float = 352.0
    slope: float = 1.0
    inter: float = 0.0

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape[:3], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.voxels * self.dtype.itemsize


def _header(path: Path, raw: bytes) -> nib.Nifti1Header:
    if len(raw) < 348:
        raise InputError(path, f"not a NIfTI file (only {len(raw)} bytes, a NIfTI header needs 348)")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 540 in sizes and raw[4:8] in (b"n+2\0", b"ni2\0"):
        raise InputError(path, "NIfTI-2 header: SimpleITK (nnssl's reader) cannot read NIfTI-2; convert to NIfTI-1")
    if 348 not in sizes:
        raise InputError(path, "not a NIfTI file (bad header size field)")
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    magic = bytes(hdr["magic"]).rstrip(b"\0")
    if magic == b"ni1":
        raise InputError(path, "NIfTI header/image pair (.hdr/.img) is not supported; use a single .nii file")
    if magic != b"n+1":
        raise InputError(path, f"not a NIfTI file (magic {magic!r})")
    return hdr


def _offset(vox_offset: float) -> int:
    """``int(vox_offset)``, or -1 where SimpleITK's C ``int`` cannot hold it (it then reads from 348)."""
    if not np.isfinite(vox_offset) or vox_offset >= _SITK_OFFSET_LIMIT:
        return -1  # refused by read_voxels after the size checks
    return int(vox_offset)


def _check_offset(path: Path, offset: int, vox_offset: float) -> None:
    if offset < 0:
        raise InputError(path, f"invalid vox_offset {vox_offset:.10g} (SimpleITK would read the voxels from byte 348)")
    if offset < 352:
        raise InputError(path, f"vox_offset {vox_offset:g} points inside the header (a .nii's voxels start at "
                               f"byte 352 or later): SimpleITK would read them from byte {max(offset, 348)}, "
                               f"other readers from 352; refused rather than stored shifted")


def _layout(path: Path, hdr: nib.Nifti1Header) -> NiftiLayout:
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
    if dtype.fields is not None or dtype.kind not in "iuf" or dtype.str[1:] not in _DTYPES:
        raise InputError(path, f"unsupported voxel type {dtype} (expected scalar integers or floats)")
    # SimpleITK's scaling (measured): a non-finite or |slope| < eps slope counts as 1, a non-finite
    # intercept as 0; it rescales when the result is not (1, 0)
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if not (np.isfinite(slope) and abs(slope) >= np.finfo(np.float64).eps):
        slope = 1.0
    inter = inter if np.isfinite(inter) else 0.0
    return NiftiLayout(shape=shape, dtype=dtype, offset=_offset(float(hdr["vox_offset"])),
                       vox_offset=float(hdr["vox_offset"]), slope=slope, inter=inter)


def _readinto(stream, buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def _skip(stream, n: int) -> int:
    """Read and drop ``n`` bytes in bounded chunks; returns how many there were."""
    left = n
    while left > 0:
        chunk = stream.read(min(_CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
    return n - left


def read_voxels(path: str | Path, *, max_bytes: int | None = None) -> tuple[np.ndarray, NiftiLayout]:
    """The voxels SimpleITK would read from ``path``, checked: array ``(z, y, x)`` in the file's dtype
    (native byte order, unscaled) and the layout (:func:`itk_pixels` applies the scaling).

    Raises :class:`InputError` unless the file is a complete, finite, single-volume 3-D NIfTI-1.
    ``max_bytes`` bounds the decoded float32 volume (``voxels * 4``, checked before any voxel is
    read) and how far into the decompressed stream the voxels may start (a bomb of a gap is refused
    before it is decompressed).

    >>> read_voxels("no/such/file.nii.gz")
    Traceback (most recent call last):
    openmind_prep.core.paths.InputError: no/such/file.nii.gz: file not found
    >>> import nilearn
    >>> mni = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    >>> data, layout = read_voxels(mni)
    >>> data.shape, data.dtype, layout.offset
    ((189, 233, 197), dtype('uint8'), 352)
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (_gzip.open(path, "rb") if gzipped else open(path, "rb")) as stream:
            raw = stream.read(348)
            layout = _layout(path, _header(path, raw))
            voxels = layout.voxels
            if max_bytes is not None and voxels * 4 > max_bytes:
                raise InputError(path, f"decoded volume would need {voxels * 4:,} bytes ({voxels:,} voxels × 4, "
                                       f"shape {layout.shape}), above the limit of {max_bytes:,} bytes")
            _check_offset(path, layout.offset, layout.vox_offset)
            if gzipped and max_bytes is not None and layout.offset > max_bytes:
                raise InputError(path, f"vox_offset {layout.offset:,}: the voxels would start {layout.offset:,} "
                                       f"bytes into the decompressed stream, above the limit of {max_bytes:,} bytes")
            if gzipped:
                present = len(raw) + _skip(stream, layout.offset - len(raw))
            else:
                present = min(os.fstat(stream.fileno()).st_size, layout.offset)
                stream.seek(layout.offset)
            if present < layout.offset:
                raise InputError(path, f"truncated: file ends inside the header/extensions (before byte "
                                       f"{layout.offset:,})")
            data = np.empty(voxels, dtype=layout.dtype.newbyteorder("="))
            got = _readinto(stream, memoryview(data).cast("B"))
            if got < layout.nbytes:
                raise InputError(path, f"truncated: {got:,} of {layout.nbytes:,} voxel data bytes present "
                                       f"(SimpleITK would silently fill the rest with zeros)")
            if gzipped:
                stream.read(1)  # reaches the gzip trailer when the data end the stream: CRC and length checked
    except _GZIP_ERRORS as e:
        raise InputError(path, f"truncated or corrupt gzip stream ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise InputError(path, f"cannot read file ({type(e).__name__}: {e})") from None
    if not layout.dtype.isnative:
        data.byteswap(inplace=True)  # big-endian file: read as native bytes, swapped to the values
    if data.dtype.kind == "f" and not (np.isfinite(data.min()) and np.isfinite(data.max())):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(path, f"{bad:,} NaN/inf voxel values (SimpleITK would silently turn them into 0)")
    return data.reshape(layout.shape[:3][::-1]), layout


def itk_pixels(data: np.ndarray, layout: NiftiLayout) -> np.ndarray:
    """``data`` as SimpleITK's pixel array: unchanged without scaling; else float64 for float64 files
    and float32 otherwise, each value ``T((double) T(raw) * slope + inter)`` (measured equal bit for
    bit on every integer and float type), computed in slabs so no float64 copy of the volume exists.

    >>> layout = NiftiLayout(shape=(2, 1, 1), dtype=np.dtype("i2"), offset=352, slope=0.5, inter=1.0)
    >>> itk_pixels(np.array([[[2, 3]]], np.int16), layout).tolist()
    [[[2.0, 2.5]]]
    """
    if layout.slope == 1.0 and layout.inter == 0.0:
        return data
    out_type = np.float64 if data.dtype == np.float64 else np.float32
    out = np.empty(data.shape, dtype=out_type)
    flat, dst = data.reshape(-1), out.reshape(-1)
    step = 1 << 20
    for i in range(0, flat.size, step):
        part = flat[i:i + step].astype(out_type).astype(np.float64)
        part *= layout.slope
        part += layout.inter
        with np.errstate(over="ignore"):  # beyond float32: inf, as SimpleITK; refused by the statistics' check
            dst[i:i + step] = part
    return out


def check_nifti(path: str | Path, *, max_bytes: int | None = None) -> None:
    """Raise :class:`InputError` unless ``path`` is a complete, finite, single-volume 3-D NIfTI
    that SimpleITK reads as it is (see :func:`read_voxels`).

    >>> check_nifti("no/such/file.nii.gz")
    Traceback (most recent call last):
    openmind_prep.core.paths.InputError: no/such/file.nii.gz: file not found
    """
    read_voxels(path, max_bytes=max_bytes)
