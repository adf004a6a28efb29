"""Builders of hostile files (archive bombs, crafted zips) and a runner with resource limits.

Shared by the tests of the model-file reader and of the data-set loaders. The bombs are
built without compressing their declared size: a deflate stream ends each segment with a
full flush, after which the compressor starts afresh, so one compressed segment of zeros
can be repeated to declare any size in a few milliseconds.
"""
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib

_SEGMENT = 1 << 24          # 16 MiB of zeros per repeated deflate segment


def _crc_of_zeros(n, crc=0):
    block = bytes(_SEGMENT)
    while n:
        k = min(n, _SEGMENT)
        crc = zlib.crc32(block[:k] if k < _SEGMENT else block, crc)
        n -= k
    return crc


def deflate_parts(parts):
    """Raw deflate of the concatenated ``parts``: bytes, or ints for that many zeros.

    Zero runs must be multiples of 16 MiB. Returns ``(compressed, crc32, size)``: about
    16 KB of output per 16 MiB of zeros, built in milliseconds whatever the size.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = c.compress(bytes(_SEGMENT)) + c.flush(zlib.Z_FULL_FLUSH)
    out, crc, size = [], 0, 0
    for part in parts:
        if isinstance(part, int):
            assert part % _SEGMENT == 0
            out.append(seg * (part // _SEGMENT))
            crc = _crc_of_zeros(part, crc)
            size += part
        else:
            out.append(c.compress(part) + c.flush(zlib.Z_FULL_FLUSH))
            crc = zlib.crc32(part, crc)
            size += len(part)
    out.append(c.flush())
    return b"".join(out), crc, size


def deflate_with_zeros(prefix, zeros, suffix=b""):
    """Raw deflate of ``prefix + bytes(zeros) + suffix`` (see :func:`deflate_parts`)."""
    return deflate_parts([prefix, zeros, suffix])


def tgz_of(members):
    """A ``.tgz`` of ``(name, size)`` members whose contents are all zeros (sizes in 16 MiB)."""
    import tarfile
    parts = []
    for name, size in members:
        info = tarfile.TarInfo(name)
        info.size = size
        parts += [info.tobuf(format=tarfile.GNU_FORMAT), size]
    parts.append(bytes(1024))
    return gzip_of(*deflate_parts(parts))


def npy_header(shape, descr="<f4"):
    """The bytes of a version 1.0 ``.npy`` header."""
    import io

    import numpy as np
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_zip(path, entries):
    """Write a zip whose entries are ``(name, method, crc, size, data)`` taken as given.

    ``method`` 0 (stored) or 8 (deflate, ``data`` already compressed); ``size`` is the
    uncompressed size that the headers declare, true or not.
    """
    out = bytearray()
    central = bytearray()
    for name, method, crc, size, data in entries:
        n = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21,
                           crc, len(data), size, len(n), 0) + n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc, len(data), size, len(n), 0, 0, 0, 0, 0, offset) + n
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries),
                       len(central), start, 0)
    with open(path, "wb") as f:
        f.write(out)


def stored(name, data):
    """A stored zip entry for :func:`write_zip`."""
    return (name, 0, zlib.crc32(data), len(data), data)


def gzip_of(compressed_deflate, crc, size):
    """A gzip file around a raw deflate stream."""
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + compressed_deflate
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


def run_limited(code, address_space=None, timeout=120, env=None):
    """Run ``code`` in a fresh interpreter under an address-space limit.

    Returns ``(returncode, stdout, stderr, seconds, peak_rss_bytes)``; the peak RSS is the
    child's own (``VmHWM``), which ``code`` reports by calling ``_report()`` last.
    """
    prelude = textwrap.dedent("""
        import resource as _r, sys as _s
        def _report():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    print("VMHWM", int(line.split()[1]) * 1024, file=_s.stderr)
        """)
    if address_space is not None:
        prelude += f"_r.setrlimit(_r.RLIMIT_AS, ({int(address_space)}, {int(address_space)}))\n"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    seconds = time.perf_counter() - t0
    rss = None
    for line in proc.stderr.splitlines():
        if line.startswith("VMHWM "):
            rss = int(line.split()[1])
    return proc.returncode, proc.stdout, proc.stderr, seconds, rss


def load_limited(path, address_space=None, timeout=120):
    """``cconv.load_model(path)`` in a fresh interpreter (see :func:`run_limited`): stdout
    holds ``ValueError <message>`` if it was refused, then ``seconds <load time>``."""
    code = f"""
        import time
        import cconv
        t = time.perf_counter()
        try:
            cconv.load_model({str(path)!r})
        except ValueError as exc:
            print("ValueError", " ".join(str(exc).split()))
        print("seconds", time.perf_counter() - t)
        _report()
        """
    return run_limited(code, address_space=address_space, timeout=timeout)
