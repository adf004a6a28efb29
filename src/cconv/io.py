"""cconv's file format: one ``.npz`` file that never executes code on load.

This module knows the file, not the model: :mod:`cconv.saving` decides what a model puts in
it (``cconv.load_model`` and ``Model.save`` are the entry points), :mod:`cconv.checkpoint`
what a training checkpoint adds. It imports nothing of cconv's but the version and the
atomic writer (:mod:`cconv._atomic`).

File format (``format_version`` 2; version 1 files are read too)
----------------------------------------------------------------
A zip archive written by :func:`numpy.savez` (uncompressed). Every member is a plain
``.npy`` array; nothing is pickled, and the loader reads each member with
``allow_pickle=False``, so an object array in a crafted file is refused before any of
its bytes are interpreted.

``__config__``
    uint8 array holding UTF-8 JSON: the format marker and version, the cconv version,
    the model architecture (see :mod:`cconv.saving`), the compile settings
    (optimizer class and config, loss, metrics), a table of every array member
    (role, owner, key, dtype, shape) and the JSON parts of the optimizer and
    training state. Arrays inside those states are replaced by references
    ``{"__array__": "<member name>"}``.
``p/<i>``, ``s/<i>``, ``o/<i>``, ``t/<i>``
    the weights, the layer state (BatchNorm running statistics), the optimizer state
    arrays and the training-state arrays; what each one is lives in the config table.
``__checksum__``
    uint8 array holding the hex SHA-256 of every other member (name, dtype, shape and
    raw bytes, in sorted name order). It is verified before anything else is used, so a
    truncated or bit-flipped file is refused with a clear message.

Writes are crash-safe: the archive goes to a temporary file in the target's directory,
which is flushed and fsync'ed, renamed over the target with :func:`os.replace`, and the
directory is fsync'ed. A process killed at any moment leaves either the old file or the
new one, never a mix. A replaced file keeps its permission bits.

Reading costs memory and time in proportion to the file's size on disk, never to what its
headers declare: members must be stored (not deflated) and fit in the file together, the
config is read and its format checked before any array, and its JSON may nest at most
``MAX_CONFIG_DEPTH`` levels.
"""
import hashlib
import json
import os
import zipfile

import numpy as np

from ._atomic import write_atomic
from ._version import __version__

FORMAT = "cconv-model"
FORMAT_VERSION = 2
_CONFIG_KEY = "__config__"
_CHECKSUM_KEY = "__checksum__"
_ZIP_MAGIC = b"PK\x03\x04"

__all__ = ["read_file", "write_file", "split_tree", "join_tree", "FORMAT", "FORMAT_VERSION"]


# --------------------------------------------------------------------------------------
# JSON <-> arrays: nested states (optimizer, training position) with arrays at the leaves
# --------------------------------------------------------------------------------------
def split_tree(tree, prefix, arrays):
    """Return a JSON-able copy of ``tree`` whose ndarray leaves are moved to ``arrays``.

    Each array leaf becomes ``{"__array__": name}`` with ``name = prefix + str(i)``.
    Dict keys must be strings; tuples become lists; numpy scalars become Python numbers.
    """
    if isinstance(tree, np.ndarray):
        name = f"{prefix}{sum(1 for k in arrays if k.startswith(prefix))}"
        arrays[name] = tree
        return {"__array__": name}
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str):
                raise TypeError(f"state dict keys must be str to be saved, got {k!r} ({type(k).__name__})")
            out[k] = split_tree(v, prefix, arrays)
        return out
    if isinstance(tree, (list, tuple)):
        return [split_tree(v, prefix, arrays) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot save a value of type {type(tree).__name__} in a model file: {tree!r}")


def join_tree(tree, arrays):
    """Inverse of :func:`split_tree`."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            name = tree["__array__"]
            if name not in arrays:
                raise ValueError(f"model file is inconsistent: it refers to a missing array {name!r}")
            return arrays[name]
        return {k: join_tree(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tree(v, arrays) for v in tree]
    return tree


def _checksum(arrays):
    """Hex SHA-256 over the names, dtypes, shapes and bytes of ``arrays`` (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        header = json.dumps([name, a.dtype.str, list(a.shape)]).encode()
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Raw file layer: a dict of arrays + a JSON document, checksummed, written atomically
# --------------------------------------------------------------------------------------
class _RefusedFile(ValueError):
    """A file refused on purpose (not merely damaged)."""


def write_file(path, document, arrays):
    """Write ``document`` (JSON-able dict) and ``arrays`` to ``path`` atomically.

    A file that ``path`` replaces keeps its permission bits (and, where the process may
    set them, its owner and group); a new file gets the permissions the umask gives
    (see :mod:`cconv._atomic`).

    Parameters
    ----------
    path : str or os.PathLike
        Target file. Its directory must exist. The name is used as given (no ``.npz`` is
        appended).
    document : dict
        JSON-serialisable document, stored as the ``__config__`` member.
    arrays : dict of str to ndarray
        Numeric arrays (no object dtype). Names must not start with ``__``.
    """
    members = {}
    for name, a in arrays.items():
        if name.startswith("__"):
            raise ValueError(f"array names starting with '__' are reserved, got {name!r}")
        a = np.ascontiguousarray(a)
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype object; only numeric arrays can be saved")
        members[name] = a
    text = json.dumps(document, allow_nan=True, sort_keys=True)
    members[_CONFIG_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    digest = _checksum(members)
    members[_CHECKSUM_KEY] = np.frombuffer(digest.encode("ascii"), dtype=np.uint8)
    write_atomic(path, lambda f: np.savez(f, **members))


#: Deepest nesting of lists and objects accepted in a file's JSON config. cconv writes
#: about 8 levels (model, layers, layer, config, initializer, ...); a crafted file nests
#: thousands deep to exhaust the recursion of the JSON parser and of the code after it.
MAX_CONFIG_DEPTH = 64

#: Bytes read from a member at a time, so reading costs no copy of the whole member.
_READ_CHUNK = 1 << 20


def _npy_header(fp, key, path):
    """Parse a member's ``.npy`` header; returns (shape, fortran_order, dtype)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:   # numpy raises ValueError, SyntaxError, tokenize.TokenError, ...
        raise ValueError(f"member {key!r} has a malformed .npy header "
                         f"({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise _RefusedFile(
            f"refusing to load {path!r}: member {key!r} holds Python objects (a pickle); "
            "cconv model files contain only numeric arrays, and pickles are never loaded")
    if dtype.kind not in "biuf":
        raise _RefusedFile(f"{path!r} is not a cconv model file: member {key!r} has dtype {dtype}")
    if any(int(s) < 0 for s in shape):
        raise ValueError(f"member {key!r} declares a negative dimension in its shape {shape}")
    return shape, fortran, dtype


def _read_npy(fp, size, key, path):
    """Read one ``.npy`` member without numpy's pickle path and without trusting its header.

    The header is parsed first: object dtypes are refused before any payload byte is read,
    and the size the header declares must equal the member's size (which the caller has
    checked against the file's size on disk), so a crafted header can neither unpickle
    anything nor make us allocate more than the file holds.
    """
    shape, fortran, dtype = _npy_header(fp, key, path)
    count = 1
    for s in shape:
        count *= int(s)
    nbytes = count * dtype.itemsize
    header_len = fp.tell()
    if header_len + nbytes != size:
        raise ValueError(f"member {key!r} declares {nbytes} bytes of data but holds {size - header_len}")
    arr = np.empty(count, dtype=dtype)
    view = memoryview(arr).cast("B") if nbytes else b""
    done = 0
    while done < nbytes:
        chunk = fp.read(min(_READ_CHUNK, nbytes - done))
        if not chunk:
            raise ValueError(f"member {key!r} ends after {done} of {nbytes} bytes")
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return arr if not fortran else np.ascontiguousarray(arr)


def _read_member(zf, info, key, path):
    """:func:`_read_npy` on one member; a damaged member's error names the file."""
    try:
        with zf.open(info) as fp:
            return _read_npy(fp, info.file_size, key, path)
    except _RefusedFile:
        raise
    except ValueError as exc:   # a malformed .npy header, a size that does not add up
        raise ValueError(f"{path!r} is corrupted or truncated ({exc})") from None


def _checked_members(zf, path, disk_size):
    """The archive's members, refused unless they could be what :func:`write_file` wrote.

    ``np.savez`` stores members uncompressed, so every member's declared size must be its
    stored size, and all of them together must fit in the file: a compressed member, or one
    whose header declares more than the file holds, is refused before a byte is read. So
    loading never costs more memory or time than the file's size on disk.
    """
    infos = zf.infolist()
    total = 0
    keys = set()
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise _RefusedFile(f"{path!r} is not a cconv model file: unexpected member {name!r}")
        key = name[:-4]
        if key in keys:
            raise _RefusedFile(f"{path!r} is not a cconv model file: member {name!r} appears twice")
        keys.add(key)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise _RefusedFile(
                f"{path!r} is not a cconv model file: member {name!r} is compressed or "
                "encrypted (cconv writes stored members only, as np.savez does)")
        if info.file_size != info.compress_size:
            raise ValueError(f"{path!r} is corrupted: stored member {name!r} declares "
                             f"{info.file_size} bytes but occupies {info.compress_size}")
        total += info.compress_size
        if info.header_offset + info.compress_size > disk_size or total > disk_size:
            raise ValueError(f"{path!r} is corrupted or truncated: its members declare more "
                             f"bytes than the file's {disk_size}")
    return infos


def _config_depth(tree):
    """Nesting depth of a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_CONFIG_DEPTH:
                return depth
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _parse_config(raw, path):
    """The JSON document of a ``__config__`` member, with the format marker checked."""
    try:
        document = json.loads(raw.tobytes().decode("utf-8"))
    except RecursionError:
        document = None
        depth = None
    except (UnicodeDecodeError, ValueError) as exc:   # JSONDecodeError, int digit limit, ...
        raise ValueError(f"{path!r} is corrupted or not a cconv model file: unreadable config ({exc})") from None
    else:
        depth = _config_depth(document)
    if depth is None or depth > MAX_CONFIG_DEPTH:
        raise ValueError(f"{path!r} is corrupted or not a cconv model file: its config nests "
                         f"lists or objects more than {MAX_CONFIG_DEPTH} levels deep")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a cconv model file (format marker missing)")
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses file format version {version!r}; this cconv ({__version__}) reads "
            f"versions up to {FORMAT_VERSION}: upgrade cconv"
        )
    return document


def read_file(path):
    """Read and verify a file written by :func:`write_file`.

    The cost is bounded by the file's size on disk: members must be stored uncompressed
    and fit in the file, the small config member is read and its format checked before any
    array, and the SHA-256 of everything is verified before anything is returned.

    Returns
    -------
    document : dict
    arrays : dict of str to ndarray

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a cconv model file, is truncated or corrupted (checksum
        mismatch, malformed headers, a config nested too deeply), holds compressed
        members, or contains a pickled / object array (refused, never unpickled).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(4)
        disk_size = os.fstat(f.fileno()).st_size
    if magic != _ZIP_MAGIC:
        what = "is empty" if not magic else "does not start with a zip header"
        raise ValueError(f"{path!r} is not a cconv model file: it {what} (a truncated write or a different format)")
    members = {}
    try:
        with zipfile.ZipFile(path, "r") as zf:
            infos = {info.filename[:-4]: info for info in _checked_members(zf, path, disk_size)}
            if _CHECKSUM_KEY not in infos or _CONFIG_KEY not in infos:
                raise ValueError(f"{path!r} is not a cconv model file: it has no "
                                 f"{_CONFIG_KEY!r}/{_CHECKSUM_KEY!r} members")
            # The config first: a foreign or newer file is refused before any array is read.
            for key in (_CONFIG_KEY, _CHECKSUM_KEY):
                members[key] = _read_member(zf, infos[key], key, path)
                if members[key].dtype != np.uint8 or members[key].ndim != 1:
                    raise ValueError(f"{path!r} is corrupted: malformed {key} member")
            document = _parse_config(members[_CONFIG_KEY], path)
            for key, info in infos.items():
                if key not in members:
                    members[key] = _read_member(zf, info, key, path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path!r} is corrupted or truncated (zip error: {exc})") from None
    except (EOFError, OSError) as exc:
        raise ValueError(f"{path!r} is corrupted or truncated ({type(exc).__name__}: {exc})") from None

    stored = members.pop(_CHECKSUM_KEY)
    actual = _checksum(members)
    if stored.tobytes() != actual.encode("ascii"):
        raise ValueError(
            f"{path!r} is corrupted: its SHA-256 checksum does not match its contents "
            "(the file was modified, truncated or damaged after it was written)"
        )
    members.pop(_CONFIG_KEY)
    return document, members


_MOVED = {"save_model": "cconv.saving.save_model", "load_model": "cconv.saving.load_model (or cconv.load_model)",
          "model_document": "cconv.saving.model_document", "assign_weights": "cconv.saving.assign_weights",
          "load_training_state": "cconv.checkpoint.load_training_state"}


def __getattr__(name):
    if name in _MOVED:
        raise AttributeError(f"cconv.io.{name} moved to {_MOVED[name]}: cconv.io now knows only the file "
                             f"format, not models")
    raise AttributeError(f"module 'cconv.io' has no attribute {name!r}")
