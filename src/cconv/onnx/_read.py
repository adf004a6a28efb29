"""Reading an ONNX file without trusting it: sizes checked before anything is allocated,
external data only from inside the model's folder, a dtype whitelist; nothing executed.

The protobuf itself costs what the file holds (it is read whole and parsed by the ``onnx``
package's protobuf classes, which refuse truncated or malformed messages). Every tensor's
declared shape is checked against the bytes that actually hold it (its raw data, its typed
fields, or its range of an external file) before an array is made, and ranges of external
files may not overlap, so a model costs at most the size of its files in memory.
"""
import os
import stat

import numpy as np

from ._common import MIN_IMPORT_OPSET, require_onnx

#: protobuf cannot parse messages of 2 GiB or more; larger ONNX models keep their weights
#: in external data files.
MAX_PROTO_BYTES = 2**31 - 1

# TensorProto data types cconv reads: floats for weights, ints and bools for shapes/constants.
_DTYPES = {1: np.float32, 11: np.float64, 10: np.float16, 7: np.int64, 6: np.int32,
           3: np.int8, 2: np.uint8, 9: np.bool_}
# where each one's values sit when they are not raw bytes
_FIELDS = {1: "float_data", 11: "double_data", 7: "int64_data", 10: "int32_data",
           6: "int32_data", 3: "int32_data", 2: "int32_data", 9: "int32_data"}


def parse(path):
    """The ``onnx.ModelProto`` in the file at ``path``, or a ValueError saying why not."""
    onnx = require_onnx()
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_PROTO_BYTES:
            raise ValueError(f"{path!r} is {size} bytes, more than a protobuf message can hold "
                             f"(2 GiB): a model that large keeps its weights in external data")
        data = f.read()
    if not data:
        raise ValueError(f"{path!r} is empty: not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:       # google.protobuf.message.DecodeError, RuntimeWarning...
        raise ValueError(f"{path!r} is not a valid ONNX model: truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None
    check_model(proto, path)
    return proto


def check_model(proto, where):
    """Refuse a ModelProto that cannot be a complete model (a truncated file often parses
    into one that lacks its graph or opset) or that uses an opset cconv does not read."""
    if not proto.HasField("graph") or not proto.graph.node:
        raise ValueError(f"{where!r} is not a valid ONNX model: it has no graph nodes "
                         f"(a truncated or foreign file)")
    versions = {o.domain: o.version for o in proto.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise ValueError(f"{where!r} is not a valid ONNX model: it imports no default opset "
                         f"(a truncated file?)")
    if version < MIN_IMPORT_OPSET:
        raise ValueError(f"{where!r} uses opset {version}; cconv imports opset "
                         f"{MIN_IMPORT_OPSET} or newer (export it again with a newer opset)")
    if not proto.graph.output:
        raise ValueError(f"{where!r} is not a valid ONNX model: its graph has no outputs")
    return version


class TensorReader:
    """Turns TensorProtos into arrays, with external data read from ``folder`` only.

    Ranges of external files already read are remembered: two tensors may not share bytes,
    so the arrays made never add up to more than the files hold.
    """

    def __init__(self, folder):
        self.folder = None if folder is None else os.path.realpath(folder)
        self._ranges = {}

    def array(self, t, what):
        """The array of TensorProto ``t`` (``what`` names it in messages)."""
        if t.data_type not in _DTYPES:
            raise ValueError(f"{what} has ONNX data type {t.data_type}; cconv reads float32, "
                             f"float64, float16, int64, int32, int8, uint8 and bool tensors")
        dt = np.dtype(_DTYPES[t.data_type])
        dims = [int(d) for d in t.dims]
        if any(d < 0 for d in dims):
            raise ValueError(f"{what} declares a negative dimension: {dims}")
        count = 1
        for d in dims:
            count *= d
        nbytes = count * dt.itemsize
        if t.HasField("segment"):
            raise ValueError(f"{what} is a segmented tensor, which cconv does not read")
        if t.data_location == 1:                                     # EXTERNAL
            raw = self._external(t, nbytes, what)
            return np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt).reshape(dims)
        if t.HasField("raw_data"):
            if len(t.raw_data) != nbytes:
                raise ValueError(f"{what} declares shape {tuple(dims)} ({nbytes} bytes of {dt}) "
                                 f"but holds {len(t.raw_data)} bytes")
            return np.frombuffer(t.raw_data, dtype=dt.newbyteorder("<")).astype(dt).reshape(dims)
        field = getattr(t, _FIELDS[t.data_type])
        if len(field) != count:
            raise ValueError(f"{what} declares shape {tuple(dims)} ({count} values) but holds "
                             f"{len(field)}")
        if t.data_type == 10:                                        # float16 bits in int32_data
            return np.asarray(field, np.uint16).view(np.float16).reshape(dims)
        return np.asarray(field, dtype=dt).reshape(dims)

    def _external(self, t, nbytes, what):
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if self.folder is None:
            raise ValueError(f"{what} keeps its data in the external file {location!r}: load the "
                             f"model from its path so cconv knows the folder to read it from")
        if (not location or os.path.isabs(location) or "\\" in location or "\0" in location
                or ".." in location.split("/")):
            raise ValueError(f"{what} refers to external data {location!r}: only files inside "
                             f"the model's folder (relative paths without '..') are read")
        full = os.path.realpath(os.path.join(self.folder, location))
        if os.path.commonpath([full, self.folder]) != self.folder:
            raise ValueError(f"{what} refers to external data {location!r}, which resolves "
                             f"outside the model's folder (a link?): refused")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ValueError(f"{what}: malformed external data offset/length {info!r}") from None
        if offset < 0 or (length is not None and length != nbytes):
            raise ValueError(f"{what} declares {nbytes} bytes but its external data entry says "
                             f"offset {offset}, length {length}")
        try:
            # Non-blocking open, then a regular file only: a FIFO named like the data file
            # (an archive can hold one) would block open() or read() forever.
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise ValueError(f"{what} refers to external data {location!r}, which is not a "
                                 f"regular file")
            with os.fdopen(fd, "rb") as f:
                size = st.st_size
                if offset + nbytes > size:
                    raise ValueError(f"{what} declares {nbytes} bytes at offset {offset} of "
                                     f"{location!r}, which holds {size}: truncated or corrupt")
                ranges = self._ranges.setdefault(full, [])
                if any(offset < e and b < offset + nbytes for b, e in ranges):
                    raise ValueError(f"{what} reads bytes [{offset}, {offset + nbytes}) of "
                                     f"{location!r}, which another tensor already read")
                ranges.append((offset, offset + nbytes))
                f.seek(offset)
                raw = f.read(nbytes)
        except OSError as exc:
            raise ValueError(f"{what}: cannot read its external data {location!r} "
                             f"({type(exc).__name__}: {exc})") from None
        if len(raw) != nbytes:
            raise ValueError(f"{what}: external data {location!r} ended early")
        return raw
