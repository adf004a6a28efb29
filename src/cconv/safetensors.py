"""The safetensors format: named tensors that any tool can read, and that execute nothing.

cconv writes and reads it itself (no dependency): the format is an 8-byte little-endian
header length ``n``, ``n`` bytes of JSON header, then the raw little-endian C-order data
of every tensor. The header maps each tensor name to ``{"dtype": "F32", "shape": [...],
"data_offsets": [begin, end]}`` (offsets into the data that follows the header) and may
hold ``"__metadata__"``, a dict of str to str. Files written here are read by the
``safetensors`` package (``safetensors.numpy.load_file``) and the other way round.

Reading trusts nothing in the header: its length is checked against the file's size
(and capped at :data:`MAX_HEADER_BYTES`), every tensor's dtype is on a whitelist, its
shape's size times the item size must equal its byte range, the ranges must lie within
the file, may not overlap and must cover the data exactly (as the reference reader
requires). So reading costs memory in proportion to the file's size on disk, never to
what its header declares, and a crafted file is refused before any array is allocated.

:meth:`cconv.Model.save_weights` / :meth:`cconv.Model.load_weights` use this format for a
path ending in ``.safetensors``: one tensor per weight, named ``"<layer>/<key>"``
(``"conv1/kernel"``, ``"bn/running_mean"``, ``"block/conv/kernel"`` in a block), in cconv's
layouts (kernels HWIO, dense kernels ``(in, out)``).
"""
import json
import os

import numpy as np

from ._atomic import write_atomic

__all__ = ["save_file", "load_file", "read_metadata", "is_safetensors", "MAX_HEADER_BYTES"]

#: The largest JSON header accepted (the reference implementation's limit).
MAX_HEADER_BYTES = 100_000_000

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dt: name for name, dt in _DTYPES.items()}
_READ_CHUNK = 1 << 20


def _code(dtype, name):
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    if dt not in _NAMES:
        raise TypeError(f"tensor {name!r} has dtype {np.dtype(dtype)}, which safetensors cannot "
                        f"hold here (supported: {sorted(str(d) for d in _NAMES)})")
    return _NAMES[dt], dt


def save_file(tensors, path, metadata=None):
    """Write ``tensors`` (dict of str to ndarray) to ``path`` in safetensors format,
    atomically (the old file or the new one survives a crash, never a mix).

    Parameters
    ----------
    tensors : dict of str to ndarray
        Numeric or bool arrays; names must be non-empty and not ``"__metadata__"``.
    path : str or os.PathLike
    metadata : dict of str to str, optional
        Stored as the header's ``"__metadata__"``.
    """
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name to array, got {type(tensors).__name__}")
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError(f"metadata must be a dict of str to str, got {metadata!r:.200}")
    arrays = []
    for name, a in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"tensor names must be non-empty str other than '__metadata__', "
                             f"got {name!r}")
        a = np.asarray(a)
        code, dt = _code(a.dtype, name)
        arrays.append((name, code, np.ascontiguousarray(a, dtype=dt)))
    # Larger items first keeps every tensor aligned to its item size (as the reference does).
    arrays.sort(key=lambda t: (-t[2].dtype.itemsize, t[0]))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, code, a in arrays:
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)          # the data starts 8-byte aligned

    def write(f):
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for _, _, a in arrays:
            if a.size:
                f.write(memoryview(a).cast("B"))

    write_atomic(path, write)


def is_safetensors(path):
    """Whether the file at ``path`` looks like a safetensors file (a JSON object starting at
    byte 8, after the header length), without checking it; reads 9 bytes."""
    with open(os.fspath(path), "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and head[:4] != b"PK\x03\x04"


def _read_header(f, path, size):
    if size < 8:
        raise ValueError(f"{path!r} is not a safetensors file: {size} bytes, shorter than the "
                         f"8-byte header length")
    n = int.from_bytes(f.read(8), "little")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{path!r} is not a safetensors file or is corrupted: its header "
                         f"declares {n} bytes (at most {MAX_HEADER_BYTES} accepted)")
    if n > size - 8:
        raise ValueError(f"{path!r} is truncated or corrupted: its header declares {n} bytes "
                         f"but the file holds {size - 8} after the length")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path!r} is not a safetensors file or is corrupted: unreadable "
                         f"header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path!r} is corrupted: the header is not a JSON object")
    return header, 8 + n


def _entries(header, path, data_size):
    """``[(name, dtype, shape, begin, end)]`` of the header, every claim checked."""
    meta = header.get("__metadata__")
    if meta is not None and (not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise ValueError(f"{path!r} is corrupted: __metadata__ must map str to str")
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path!r}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where} is malformed: expected dtype, shape and data_offsets, "
                             f"got {info!r:.200}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in _DTYPES:
            raise ValueError(f"{where} has dtype {code!r}; cconv reads {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(
                type(s) is int and s >= 0 for s in shape) or len(shape) > 32:
            raise ValueError(f"{where} has an invalid shape {shape!r:.200}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                type(o) is int for o in offsets):
            raise ValueError(f"{where} has invalid data_offsets {offsets!r:.200}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise ValueError(f"{where} spans bytes [{begin}, {end}) of a data section of "
                             f"{data_size} bytes: the file is truncated or corrupted")
        dt = _DTYPES[code]
        count = 1
        for s in shape:
            count *= s
        if count * dt.itemsize != end - begin:
            raise ValueError(f"{where} declares shape {tuple(shape)} of {code} "
                             f"({count * dt.itemsize} bytes) but spans {end - begin} bytes")
        out.append((name, dt, tuple(shape), begin, end))
    out.sort(key=lambda e: (e[3], e[4]))
    pos = 0
    for name, _, _, begin, end in out:
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a hole at byte {pos}"
            raise ValueError(f"{path!r} is corrupted: tensor {name!r} (bytes [{begin}, {end})) {what}")
        pos = end
    if pos != data_size:
        raise ValueError(f"{path!r} is corrupted: its tensors cover {pos} of the {data_size} "
                         f"data bytes")
    return out


def read_metadata(path):
    """The header's ``__metadata__`` (dict of str to str, empty if none), checked as
    :func:`load_file` checks it, without reading any tensor."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, start = _read_header(f, path, size)
        _entries(header, path, size - start)
    return dict(header.get("__metadata__") or {})


def load_file(path):
    """Read every tensor of a safetensors file: a dict of str to ndarray (in file order).

    Raises
    ------
    FileNotFoundError
    ValueError
        Not a safetensors file, truncated, or a header whose claims do not add up (sizes,
        offsets outside the file, overlaps, holes, an unknown dtype); nothing is allocated
        for a tensor before its claims are checked against the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, start = _read_header(f, path, size)
        entries = _entries(header, path, size - start)
        out = {}
        for name, dt, shape, begin, end in entries:
            try:
                a = np.empty(shape, dt)
            except (ValueError, OverflowError):   # an empty tensor with a dimension beyond numpy's
                raise ValueError(f"{path!r}: tensor {name!r} has shape {shape}, which numpy cannot "
                                 f"make") from None
            view = memoryview(a.reshape(-1)).cast("B") if a.size else b""
            f.seek(start + begin)
            done, nbytes = 0, end - begin
            while done < nbytes:
                chunk = f.read(min(_READ_CHUNK, nbytes - done))
                if not chunk:
                    raise ValueError(f"{path!r} is truncated: tensor {name!r} ends after "
                                     f"{done} of {nbytes} bytes")
                view[done:done + len(chunk)] = chunk
                done += len(chunk)
            out[name] = a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    return out
