"""Crash-safe file replacement, shared by every writer of user files (:mod:`cconv.io`,
:mod:`cconv.safetensors`, :mod:`cconv.onnx`).

The content goes to a temporary file in the target's directory, which is flushed and
fsync'ed, renamed over the target with :func:`os.replace`, and the directory is fsync'ed.
A process killed at any moment leaves either the old file or the new one, never a mix,
and nothing is written outside the target's directory. A replaced file keeps its
permission bits (and, where the process may set them, its owner and group); a new file
gets the permissions the umask gives.
"""
import os
import re
import stat

__all__ = ["write_atomic"]


def _fsync_dir(directory):
    """fsync a directory so a rename inside it survives a power cut (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def _remove_stale_temporaries(directory, basename):
    """Remove temporary files of earlier saves to ``basename`` whose writer has died."""
    if os.name != "posix":
        return
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        m = _TMP_RE.match(entry)
        if m is None or m.group("name") != basename:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.remove(os.path.join(directory, entry))
            except OSError:
                pass
        except OSError:  # exists but belongs to someone else: leave it
            continue


def _target_mode(path):
    """``(permission bits, uid, gid)`` of an existing ``path``, or None for a new file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st.st_mode) & 0o777, st.st_uid, st.st_gid


def write_atomic(path, write):
    """Replace the file at ``path`` with what ``write(f)`` writes to a binary file object.

    Raises FileNotFoundError / IsADirectoryError / ValueError for a path that cannot name
    a file (its directory missing, a directory, an empty name) before anything is written.
    If ``write`` raises, the target is untouched and the temporary file removed.
    """
    path = os.fspath(path)
    basename = os.path.basename(path)
    if not basename or basename in (".", ".."):
        raise ValueError(f"cannot save to {path!r}: the path must name a file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a directory")
    _remove_stale_temporaries(directory, basename)
    tmp = os.path.join(directory, f".{basename}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    old = _target_mode(path)
    # Replacing a file: the temporary starts private and takes the old file's bits before
    # the rename. A new file: 0o666 less the umask, as open() would give.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o600 if old else 0o666)
    try:
        with open(fd, "wb") as f:
            if old is not None and os.name == "posix":
                mode, uid, gid = old
                try:
                    os.fchown(f.fileno(), uid, gid)
                except OSError:   # not ours to give away: keep the owner, keep the bits
                    pass
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
