"""A TensorBoard event-file writer that needs neither TensorFlow nor TensorBoard.

An event file is a sequence of TFRecords (``uint64 length``, ``uint32 masked CRC-32C of the
length``, the bytes, ``uint32 masked CRC-32C of the bytes``), each holding one ``Event``
protocol buffer. The few messages used are encoded here by hand, field numbers from
TensorFlow's ``event.proto`` and ``summary.proto``:

- ``Event``: ``wall_time`` (1, double), ``step`` (2, int64), ``file_version`` (3, string),
  ``summary`` (5, Summary);
- ``Summary``: repeated ``value`` (1, Value);
- ``Summary.Value``: ``tag`` (1, string), ``simple_value`` (2, float), ``image`` (4, Image),
  ``histo`` (5, HistogramProto);
- ``Summary.Image``: ``height`` (1), ``width`` (2), ``colorspace`` (3), ``encoded_image_string``
  (4, a PNG made here with zlib);
- ``HistogramProto``: ``min`` (1), ``max`` (2), ``num`` (3), ``sum`` (4), ``sum_squares`` (5),
  ``bucket_limit`` (6, packed doubles), ``bucket`` (7, packed doubles).

TensorBoard reads these "legacy" summaries into its scalar, histogram and image dashboards.
"""
import os
import socket
import struct
import time
import zlib

import numpy as np

__all__ = ["EventWriter", "masked_crc32c", "png"]


def _crc32c_table():
    poly = 0x82F63B78                     # CRC-32C (Castagnoli), reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """The checksum TFRecords store: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------
# Protocol buffers, by hand
# --------------------------------------------------------------------------------------
def _varint(v):
    v &= (1 << 64) - 1                   # negative int64 as two's complement, as protobuf
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return _varint(field << 3 | wire)


def _bytes(field, payload):
    return _key(field, 2) + _varint(len(payload)) + payload


def _double(field, v):
    return _key(field, 1) + struct.pack("<d", float(v))


def _float(field, v):
    return _key(field, 5) + struct.pack("<f", float(v))


def _int(field, v):
    return _key(field, 0) + _varint(int(v))


def _packed_doubles(field, values):
    return _bytes(field, np.asarray(values, dtype="<f8").tobytes())


def _event(step, summary_values=None, file_version=None, wall_time=None):
    msg = _double(1, time.time() if wall_time is None else wall_time) + _int(2, step)
    if file_version is not None:
        msg += _bytes(3, file_version.encode())
    if summary_values:
        msg += _bytes(5, b"".join(_bytes(1, v) for v in summary_values))
    return msg


def _scalar_value(tag, value):
    return _bytes(1, tag.encode()) + _float(2, value)


def _histogram_value(tag, values, bins=30):
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        v = np.zeros(1)
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        edges = np.array([lo - 0.5, hi + 0.5])
        counts = np.array([float(v.size)])
    else:
        counts, edges = np.histogram(v, bins=bins)
    histo = (_double(1, lo) + _double(2, hi) + _double(3, v.size) + _double(4, v.sum())
             + _double(5, np.dot(v, v)) + _packed_doubles(6, edges[1:])
             + _packed_doubles(7, counts.astype(np.float64)))
    return _bytes(1, tag.encode()) + _bytes(5, histo)


def png(image):
    """PNG bytes of a uint8 image ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``."""
    a = np.ascontiguousarray(image, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    color = {1: 0, 3: 2, 4: 6}[c]

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))       # filter 0 on every row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _image_value(tag, image):
    a = np.asarray(image)
    h, w = a.shape[:2]
    c = 1 if a.ndim == 2 else a.shape[2]
    img = _int(1, h) + _int(2, w) + _int(3, c) + _bytes(4, png(a))
    return _bytes(1, tag.encode()) + _bytes(4, img)


# --------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------
class EventWriter:
    """Append events to a new ``events.out.tfevents.*`` file in ``log_dir``.

    The file is created (with its ``brain.Event:2`` header record) on the first write and
    flushed by :meth:`flush`; every record is complete when ``flush`` returns.
    """

    _count = 0

    def __init__(self, log_dir):
        self.log_dir = os.fspath(log_dir)
        self._file = None

    def _open(self):
        os.makedirs(self.log_dir, exist_ok=True)
        EventWriter._count += 1
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}."
                f"{EventWriter._count}.cconv")
        self.path = os.path.join(self.log_dir, name)
        self._file = open(self.path, "wb")
        self._record(_event(0, file_version="brain.Event:2"))

    def _record(self, data):
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))

    def _write(self, step, value):
        if self._file is None:
            self._open()
        self._record(_event(step, [value]))

    def scalar(self, tag, value, step):
        self._write(step, _scalar_value(tag, value))

    def histogram(self, tag, values, step, bins=30):
        self._write(step, _histogram_value(tag, values, bins))

    def image(self, tag, image, step):
        """``image``: uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``."""
        self._write(step, _image_value(tag, image))

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
