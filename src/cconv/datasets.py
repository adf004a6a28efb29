"""Data sets used by the examples and the paper reproduction.

- :func:`load_lfw`: Labeled Faces in the Wild from a folder in the standard LFW layout
  or straight from one of the official ``.tgz`` archives (needs Pillow).
- :func:`load_digits`: scikit-learn's bundled 8x8 handwritten digits as NHWC images
  (needs scikit-learn).
- :func:`train_test_split`: a seeded random (optionally stratified) split.

Images are returned as float32 arrays of shape ``(N, H, W, C)`` with values in
``[0, 1]`` and labels as int64, ready for :class:`cconv.Sequential`.

Nothing here downloads anything: the loaders take a path (LFW) or read data that
ships inside an installed package (digits).
"""
import bz2
import gzip
import lzma
import math
import os
import posixpath
import tarfile
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np

from . import _images

__all__ = ["LFW_DEFAULT_CROP", "LFW_MAX_FILE_BYTES", "LFW_MAX_OUTPUT_PIXELS", "LFW_MAX_ARCHIVE_EXPANSION",
           "load_lfw", "load_digits", "train_test_split"]

#: Default face crop box ``(left, upper, right, lower)`` in pixels of a 250x250 LFW image.
#: See :func:`load_lfw` for why.
LFW_DEFAULT_CROP = (61, 66, 189, 194)

_LFW_REFERENCE_SIZE = 250
_IMAGE_SUFFIXES = (".jpg", ".jpeg")

#: Largest image file read from an archive, in bytes (an LFW JPEG is about 15 KB).
LFW_MAX_FILE_BYTES = 64 << 20
#: Largest output image, in pixels (``size`` height times width).
LFW_MAX_OUTPUT_PIXELS = _images.MAX_OUTPUT_PIXELS
#: A compressed archive may expand to at most this many times its size on disk, plus
#: ``_ARCHIVE_SLACK`` bytes: JPEGs do not compress, so a real LFW ``.tgz`` expands by
#: about 1.06x, while a crafted one of 1 MB can declare gigabytes of zeros.
LFW_MAX_ARCHIVE_EXPANSION = 4
_ARCHIVE_SLACK = 16 << 20


# ---------------------------------------------------------------------------
# LFW
# ---------------------------------------------------------------------------

def _is_image_name(name):
    base = posixpath.basename(name)
    return not base.startswith(".") and base.lower().endswith(_IMAGE_SUFFIXES)


def _group_by_person(relpaths, where):
    """Group relative POSIX paths ``[root/]Person/file.jpg`` by person.

    Only the shallowest depth that holds images counts (2 = ``Person/file.jpg`` when
    ``path`` is the image folder itself, 3 = ``root/Person/file.jpg`` for an archive
    or a folder that contains the image folder).

    Returns a dict person -> sorted list of relative paths.
    """
    by_depth = {}
    for rel in relpaths:
        parts = rel.split("/")
        if len(parts) in (2, 3):
            by_depth.setdefault(len(parts), []).append(rel)
    if not by_depth:
        return {}
    depth = min(by_depth)
    people = {}
    parents = {}
    for rel in by_depth[depth]:
        parent = posixpath.dirname(rel)
        person = posixpath.basename(parent)
        seen = parents.setdefault(person, parent)
        if seen != parent:
            raise ValueError(
                f"{where} holds images of {person!r} in two folders ({seen!r} and {parent!r}); "
                "point load_lfw at one LFW variant (for example lfw-deepfunneled/)"
            )
        people.setdefault(person, []).append(rel)
    return {person: sorted(files) for person, files in people.items()}


def _list_folder(root):
    relpaths = []
    for person_dir in sorted(root.iterdir()):
        if not person_dir.is_dir() or person_dir.name.startswith("."):
            continue
        for entry in person_dir.iterdir():
            if entry.is_file() and _is_image_name(entry.name):
                relpaths.append(f"{person_dir.name}/{entry.name}")
            elif entry.is_dir() and not entry.name.startswith("."):
                # root/Person/file.jpg (path is the folder that contains the image folder)
                for sub in entry.iterdir():
                    if sub.is_file() and _is_image_name(sub.name):
                        relpaths.append(f"{person_dir.name}/{entry.name}/{sub.name}")
    return relpaths


class _CappedStream:
    """A decompressing file object that refuses to produce more than ``limit`` bytes.

    Reads and forward seeks (how :mod:`tarfile` skips a member's data) past ``limit``
    raise ValueError instead of decompressing, so an archive costs time in proportion to
    its size on disk, not to what its headers declare.
    """

    def __init__(self, raw, limit, where):
        self._raw, self._limit, self._where = raw, limit, where

    def _refuse(self):
        raise ValueError(
            f"{self._where} expands to more than {self._limit:,} bytes "
            f"(LFW_MAX_ARCHIVE_EXPANSION={LFW_MAX_ARCHIVE_EXPANSION} times its size on disk): "
            "a decompression bomb, or an archive that is mostly not JPEG images; extract it "
            "and pass the folder instead")

    def tell(self):
        return self._raw.tell()

    def seek(self, offset, whence=os.SEEK_SET):
        target = offset + (self._raw.tell() if whence == os.SEEK_CUR else 0)
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target > self._limit:
            self._refuse()
        return self._raw.seek(target)

    def read(self, n=-1):
        room = self._limit - self._raw.tell()
        data = self._raw.read(room + 1 if n is None or n < 0 else min(n, room + 1))
        if len(data) > room:
            self._refuse()
        return data

    def close(self):
        self._raw.close()


_DECOMPRESSORS = ((b"\x1f\x8b", gzip.GzipFile), (b"BZh", bz2.BZ2File),
                  (b"\xfd7zXZ\x00", lzma.LZMAFile))

#: What a damaged archive raises while it is read.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _open_archive(path):
    """``tarfile.TarFile`` over ``path``, decompressed through a :class:`_CappedStream`."""
    with open(path, "rb") as f:
        magic = f.read(6)
    size = os.path.getsize(path)
    raw = open(path, "rb")
    try:
        for prefix, opener in _DECOMPRESSORS:
            if magic.startswith(prefix):
                limit = LFW_MAX_ARCHIVE_EXPANSION * size + _ARCHIVE_SLACK
                raw = _CappedStream(opener(fileobj=raw), limit, f"archive {str(path)!r}")
                break
        return tarfile.open(fileobj=raw, mode="r:")
    except BaseException:
        raw.close()
        raise


def _list_archive(archive, path):
    """{relative name: TarInfo} of the archive's image files; refuses oversized ones."""
    members = {}
    while True:
        m = archive.next()
        if m is None:
            return members
        name = m.name[2:] if m.name.startswith("./") else m.name
        if m.isfile() and _is_image_name(name):
            if m.size > LFW_MAX_FILE_BYTES:
                raise ValueError(
                    f"{path}:{m.name} declares {m.size:,} bytes, more than "
                    f"LFW_MAX_FILE_BYTES={LFW_MAX_FILE_BYTES:,} for one image file")
            members[name] = m


def _output_array(n, shape, path):
    """The float32 result of ``n`` images of ``shape``, refused up front if it cannot fit."""
    nbytes = 4 * n * math.prod(shape)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    if memory is not None and nbytes > memory:
        raise ValueError(
            f"{n} images of {shape[0]}x{shape[1]}x{shape[2]} from {str(path)!r} need "
            f"{nbytes / 2**30:.1f} GiB as float32, more than this machine's "
            f"{memory / 2**30:.1f} GiB; pass a smaller size= or max_faces_per_person=")
    return np.empty((n,) + tuple(shape), np.float32)


def load_lfw(path, min_faces_per_person=30, size=(64, 64), color=True,
             crop=LFW_DEFAULT_CROP, max_faces_per_person=None):
    """Load Labeled Faces in the Wild (LFW) as NHWC float32 images.

    Reads the standard LFW layout ``<Person_Name>/<Person_Name>_NNNN.jpg`` either from
    a folder or directly from an official archive (``lfw.tgz``, ``lfw-funneled.tgz``,
    ``lfw-deepfunneled.tgz``; any ``tar`` that :mod:`tarfile` opens), without
    extracting it to disk.

    Parameters
    ----------
    path : str or os.PathLike
        The image folder (e.g. ``lfw-deepfunneled/``, whose subfolders are the people),
        a folder containing it, or a ``.tgz``/``.tar`` archive of it.
    min_faces_per_person : int, default 30
        Keep only the people with at least this many images. With 30 on LFW this gives
        the 34 people and 2,370 images of the paper.
    size : int or (int, int) or None, default (64, 64)
        Output ``(height, width)``. Resizing uses Pillow's Lanczos filter, which
        low-pass filters before subsampling (no aliasing). ``None`` keeps the
        (cropped) size; all images must then have the same size.
    color : bool, default True
        RGB (3 channels) if True, luma (1 channel, ITU-R 601-2) if False.
    crop : (left, upper, right, lower) or None, default ``LFW_DEFAULT_CROP``
        Box cut out of each image before resizing, in pixel coordinates of the
        250x250 LFW frame (scaled proportionally for images of another size).
        The default ``(61, 66, 189, 194)`` is a 128x128 square centred on the face:
        LFW images are 250x250 frames in which the face (aligned by the funneling)
        covers only about the central 90x120 pixels; the rest is hair, shoulders and
        background, which change from photo to photo of the same person and so carry
        little identity information while taking most of the pixels. The box was
        chosen from the mean deep-funneled image: it spans the face from the hairline
        to the chin and ear to ear, is square (no distortion when resized to a square
        size) and is exactly twice 64x64. ``None`` keeps the full frame.
    max_faces_per_person : int or None, default None
        Keep at most this many images per person (the first ones in file order);
        meant for quick experiments. Applied after ``min_faces_per_person``.

    Returns
    -------
    x : ndarray of shape (N, H, W, C), dtype float32
        Images scaled to ``[0, 1]``.
    y : ndarray of shape (N,), dtype int64
        Labels, indices into ``class_names``.
    class_names : list of str
        Person names (folder names), sorted.

    The order is deterministic: people sorted by name, then each person's files
    sorted by name. Labels follow the same order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If no image in the LFW layout is found, no person has ``min_faces_per_person``
        images, or an image cannot be decoded (the message names the file); if the
        archive is truncated or damaged; if an archive member is larger than
        ``LFW_MAX_FILE_BYTES``, an image has more pixels than
        ``PIL.Image.MAX_IMAGE_PIXELS``, or a compressed archive expands beyond
        ``LFW_MAX_ARCHIVE_EXPANSION`` times its size (decompression bombs: loading costs
        time and memory in proportion to the files on disk and the result); if ``size``
        has more than ``LFW_MAX_OUTPUT_PIXELS`` pixels or the result cannot fit in memory
        (checked before any image is decoded).
    ImportError
        If Pillow is not installed (``pip install "cconv[data]"``).

    Examples
    --------
    >>> x, y, names = load_lfw("lfw-deepfunneled.tgz")       # doctest: +SKIP
    >>> x.shape, len(names)                                   # doctest: +SKIP
    ((2370, 64, 64, 3), 34)
    """
    path = Path(os.fspath(path))
    if isinstance(min_faces_per_person, bool) or not isinstance(min_faces_per_person, (int, np.integer)) \
            or min_faces_per_person < 0:
        raise ValueError(f"min_faces_per_person must be a non-negative int, got {min_faces_per_person!r}")
    if max_faces_per_person is not None and (
            isinstance(max_faces_per_person, bool)
            or not isinstance(max_faces_per_person, (int, np.integer)) or max_faces_per_person < 1):
        raise ValueError(f"max_faces_per_person must be None or a positive int, got {max_faces_per_person!r}")
    size = _images.normalize_size(size)
    crop = _images.normalize_crop(crop)
    if not path.exists():
        raise FileNotFoundError(f"LFW path {str(path)!r} does not exist")
    Image = _images.import_pillow("cconv.datasets.load_lfw")

    archive = None
    if path.is_dir():
        people = _group_by_person(_list_folder(path), f"folder {str(path)!r}")
    else:
        try:
            archive = _open_archive(path)
        except _ARCHIVE_ERRORS:
            raise ValueError(f"LFW path {str(path)!r} is neither a folder nor a tar archive") from None

    try:
        if archive is not None:
            members = _list_archive(archive, path)
            people = _group_by_person(members, f"archive {str(path)!r}")
        if not people:
            raise ValueError(
                f"no JPEG images in the LFW layout <Person_Name>/<Person_Name>_NNNN.jpg "
                f"found in {str(path)!r}"
            )
        kept = sorted(p for p, files in people.items() if len(files) >= min_faces_per_person)
        if not kept:
            most = max(len(files) for files in people.values())
            raise ValueError(
                f"no person in {str(path)!r} has at least min_faces_per_person="
                f"{min_faces_per_person} images (the most is {most})"
            )
        files, labels = [], []
        for label, person in enumerate(kept):
            chosen = people[person][:max_faces_per_person]
            files.extend(chosen)
            labels.extend([label] * len(chosen))

        x = None
        if size is not None:
            x = _output_array(len(files), size + (3 if color else 1,), path)
        if archive is None:
            sources = ((i, path / rel, str(path / rel)) for i, rel in enumerate(files))
        else:
            # Decode in archive order: a compressed tar is a stream, and jumping
            # backwards in it means decompressing again from the start.
            order = sorted(range(len(files)), key=lambda i: members[files[i]].offset)
            sources = ((i, members[files[i]], f"{path}:{files[i]}") for i in order)
        first = None
        for i, source, name in sources:
            if archive is not None:
                try:
                    source = BytesIO(archive.extractfile(source).read())
                except _ARCHIVE_ERRORS as exc:
                    raise ValueError(f"cannot read {name}: the archive is truncated or damaged "
                                     f"({str(exc) or type(exc).__name__})") from None
            image = _images.decode(Image, source, name, size, crop, "RGB" if color else "L",
                                   crop_frame=_LFW_REFERENCE_SIZE)
            if x is None:
                x = _output_array(len(files), image.shape, path)
            first = first or (name, image.shape)
            if image.shape != x.shape[1:]:
                raise ValueError(
                    f"images in {str(path)!r} have different sizes: {first[0]} is {first[1]}, "
                    f"{name} is {image.shape}; pass size=(H, W)")
            np.multiply(image, np.float32(1.0 / 255.0), out=x[i])
    except _ARCHIVE_ERRORS as exc:
        if archive is None:
            raise
        raise ValueError(f"cannot read archive {str(path)!r}: it is truncated or damaged "
                         f"({str(exc) or type(exc).__name__})") from None
    finally:
        if archive is not None:
            archive.close()
    y = np.asarray(labels, dtype=np.int64)
    return x, y, kept


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------

def load_digits():
    """Load scikit-learn's handwritten digits as NHWC images.

    1,797 real 8x8 grey-level images of the digits 0-9 (the UCI "optical recognition
    of handwritten digits" test set), shipped inside scikit-learn: no download.

    Returns
    -------
    x : ndarray of shape (1797, 8, 8, 1), dtype float32
        Pixel values (0-16 in the source) scaled to ``[0, 1]``.
    y : ndarray of shape (1797,), dtype int64
        The digit shown.

    Raises
    ------
    ImportError
        If scikit-learn is not installed (``pip install "cconv[data]"``).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:
        raise ImportError(
            "cconv.datasets.load_digits needs scikit-learn (it ships the digits); "
            f"install it with: {_images.DATA_EXTRA}"
        ) from exc
    bunch = _sk_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[..., None]
    y = np.asarray(bunch.target, dtype=np.int64)
    return np.ascontiguousarray(x), y


# ---------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------

def _n_test(test_size, n):
    if isinstance(test_size, bool):
        raise ValueError(f"test_size must be a float in (0, 1) or a positive int, got {test_size!r}")
    if isinstance(test_size, (int, np.integer)):
        n_test = int(test_size)
    elif isinstance(test_size, (float, np.floating)) and 0.0 < test_size < 1.0:
        n_test = math.ceil(float(test_size) * n)
    else:
        raise ValueError(f"test_size must be a float in (0, 1) or a positive int, got {test_size!r}")
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_size={test_size!r} with {n} samples leaves {n_test} for testing and "
            f"{n - n_test} for training; both must be at least 1"
        )
    return n_test


def _stratified_test_indices(y, n_test, rng):
    classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(
            f"stratify=True needs at least 2 samples per class; class {classes[counts.argmin()]!r} "
            f"has {counts.min()}"
        )
    # Share n_test between the classes in proportion to their sizes: floor of the exact
    # share, then the leftover samples to the largest remainders (ties broken at random).
    exact = n_test * counts / len(y)
    quota = np.floor(exact).astype(np.int64)
    left = n_test - int(quota.sum())
    if left > 0:
        remainder = exact - quota
        tiebreak = rng.random(len(classes))
        order = np.lexsort((tiebreak, -remainder))
        quota[order[:left]] += 1
    test = []
    for k in range(len(classes)):
        members = np.flatnonzero(y_idx == k)
        test.append(rng.choice(members, size=int(quota[k]), replace=False))
    return rng.permutation(np.concatenate(test))


def train_test_split(x, y, test_size=0.25, seed=0, stratify=False):
    """Split arrays into random train and test subsets.

    Parameters
    ----------
    x : ndarray of shape (N, ...)
        Samples (first axis).
    y : ndarray of shape (N, ...)
        Labels (first axis).
    test_size : float in (0, 1) or int, default 0.25
        Fraction of the samples (the test count is ``ceil(test_size * N)``, as in
        scikit-learn) or the number of test samples.
    seed : int, numpy.random.Generator or None, default 0
        Seed of the shuffle; the same seed gives the same split.
    stratify : bool, default False
        If True, keep the class proportions of ``y`` in both parts (each class's
        test count is its proportional share, rounded so the total is exact).

    Returns
    -------
    x_train, x_test, y_train, y_test : ndarray
        Shuffled subsets (copies).

    Examples
    --------
    With the 2,370 LFW images and ``test_size=0.25``: 1,777 train and 593 test.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples, got x of shape {x.shape} "
            f"and y of shape {y.shape}"
        )
    n = x.shape[0]
    n_test = _n_test(test_size, n)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if stratify:
        test = _stratified_test_indices(y, n_test, rng)
        mask = np.ones(n, dtype=bool)
        mask[test] = False
        train = rng.permutation(np.flatnonzero(mask))
    else:
        perm = rng.permutation(n)
        test, train = perm[:n_test], perm[n_test:]
    return x[train], x[test], y[train], y[test]
