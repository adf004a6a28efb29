"""Input pipelines: data that does not fit in one array, fed to ``fit``, ``evaluate`` and
``predict`` batch by batch.

A :class:`Dataset` is built from arrays (:meth:`Dataset.from_arrays`) or from a folder of
images with one sub-folder per class (:meth:`Dataset.from_folder`, and Keras's
:func:`image_dataset_from_directory`), and transformed with ``cache()``,
``shuffle(seed)``, ``shard(num_shards, index)``, ``take(n)``, ``skip(n)``, ``map(fn)``,
``batch(n)`` and ``prefetch(n)``; each method returns a new dataset::

    from cconv import data

    train = (data.Dataset.from_folder("photos/", image_size=(64, 64))
             .shuffle(seed=0).batch(32).prefetch(2))
    model.fit(train, epochs=10)

Memory stays bounded: a folder dataset holds the list of its files and decodes a batch when
it is needed (JPEG and PNG with Pillow, resized, optionally cropped), so a folder larger
than the memory streams; with ``prefetch(n)`` at most ``n + 2`` batches exist at once.
``cache()`` keeps the decoded images after the first epoch (in memory, or with
``cache(path)`` in a file read through ``numpy.memmap``), so that later epochs skip the
decoding.

Order, epochs and shards
------------------------
The order of an epoch is a pure function of the seeds and the epoch number:
``shuffle(seed)`` permutes the samples of epoch ``e`` with :func:`epoch_order` ``(n, seed,
e)``, a different permutation every epoch, identical in every process and after a resume.
``fit`` asks for epoch ``e`` with :meth:`Dataset.batches`; iterating a dataset yourself
(``for x, y in ds``) runs epochs 0, 1, 2... on successive loops. ``shard(num_shards,
index)`` then keeps the elements ``index, index + num_shards, ...`` of that order (as
``tf.data``'s ``shard``), so processes that share the seed train on disjoint parts of the
same global order: data-parallel training runs ``ds.shuffle(seed).shard(size,
rank).batch(b)`` on each rank (``fit(..., distributed=True)`` instead takes the same
unsharded dataset on every rank and loads each rank's contiguous part of every global batch,
``batches(epoch, part=...)``). Shards differ in length by at most one element;
``shard(..., drop_remainder=True)`` drops the last ``n % num_shards`` elements of each
epoch's order so that every shard has ``n // num_shards``. ``shuffle``, ``shard``, ``take``
and ``skip`` reorder samples, so they come before ``batch``.

Elements and maps
-----------------
An element is what the dataset yields: ``(x, y)`` (or ``(x, y, sample_weight)``, or ``x``
alone), each part an array or, for models with several inputs or outputs, a list or dict
of arrays. Before ``batch`` an element is one sample (no batch axis) and ``map(fn)`` is
applied to each sample; after ``batch`` to each batch (``fn(x, y)`` for a tuple element,
``fn(x)`` otherwise, as ``tf.data``'s ``map``). Loading and maps run in the background
thread when the dataset is prefetched.

Prefetch
--------
``prefetch(n)`` loads, decodes and maps up to ``n`` batches ahead in one background thread
while the model trains: Pillow's decoders and resizing and cconv's compiled kernels release
the GIL, so the two overlap. The order is the same as without prefetching. An exception in
the thread (a file that cannot be decoded, a map that fails) is raised in the training loop,
and abandoning an iteration (an error, a ``break``) stops the thread.

Plain Python data
-----------------
``fit``, ``evaluate`` and ``predict`` also take any iterable of batches (a list of ``(x,
y)`` tuples, a generator function's generator, an object with ``__len__`` and
``__getitem__`` returning batches such as Keras's ``PyDataset``); see
:func:`cconv.training.fit`.
"""
import os
import queue
import threading

import numpy as np

from . import _images
from . import _validate as V

__all__ = ["Dataset", "image_dataset_from_directory", "epoch_order", "IMAGE_EXTENSIONS"]

#: File extensions read as images (case-insensitive); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_COLOR_MODES = {"rgb": "RGB", "grayscale": "L", "rgba": "RGBA"}
_LABEL_MODES = ("int", "categorical", "binary", None)


def epoch_order(n, seed, epoch):
    """The permutation of ``range(n)`` that ``shuffle(seed)`` uses in epoch ``epoch``.

    A pure function (NumPy's PCG64 seeded with ``SeedSequence([seed, epoch])``): every
    process computes the same order, and the order of a later epoch does not depend on the
    earlier ones having run.
    """
    n = V.non_negative_int(n, "n")
    seed = V.non_negative_int(seed, "seed")
    epoch = V.non_negative_int(epoch, "epoch")
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


# --------------------------------------------------------------------------------------
# Element structures: an array, or a list/tuple/dict of arrays
# --------------------------------------------------------------------------------------
def _map_struct(fn, value):
    if isinstance(value, dict):
        return {k: fn(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fn(v) for v in value]
    return fn(value)


def _leaves(value):
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _as_array(a, what):
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.ndim == 0:
        raise ValueError(f"{what} must have a sample axis first, got a scalar")
    return a


def _stack(samples, what):
    """Stack a list of elements (all of one structure) into a batch."""
    first = samples[0]

    def stack_leaf(get, label):
        arrays = [np.asarray(get(s)) for s in samples]
        shape = arrays[0].shape
        for j, a in enumerate(arrays):
            if a.shape != shape:
                raise ValueError(f"{what}: sample {j} of the batch has {label} of shape {a.shape}, "
                                 f"sample 0 {shape}; the samples of a batch must have one shape")
        return np.stack(arrays)

    def stack_component(get, label):
        c = get(first)
        if isinstance(c, dict):
            return {k: stack_leaf(lambda s, k=k: get(s)[k], f"{label}[{k!r}]") for k in c}
        if isinstance(c, (list, tuple)):
            return [stack_leaf(lambda s, i=i: get(s)[i], f"{label}[{i}]") for i in range(len(c))]
        return stack_leaf(get, label)

    if isinstance(first, tuple):
        names = ("x", "y", "sample_weight")
        return tuple(stack_component(lambda s, i=i: s[i], names[i] if i < 3 else f"part {i}")
                     for i in range(len(first)))
    return stack_component(lambda s: s, "x")


def _call_map(fn, element):
    return fn(*element) if isinstance(element, tuple) else fn(element)


# --------------------------------------------------------------------------------------
# Sources: what loads the samples at given positions
# --------------------------------------------------------------------------------------
class _ArraySource:
    """Samples from arrays (NumPy arrays or anything indexable the same way, e.g. np.memmap)."""

    def __init__(self, parts, single):
        self.parts, self.single = parts, single
        lengths = {len(a) for p in parts for a in _leaves(p)}
        if len(lengths) != 1:
            names = ("x", "y", "sample_weight")
            got = ", ".join(f"{names[i]} {[len(a) for a in _leaves(p)]}" for i, p in enumerate(parts))
            raise ValueError(f"the arrays have different numbers of samples: {got}")
        self.n = lengths.pop()

    def __len__(self):
        return self.n

    def load(self, index):
        out = tuple(_map_struct(lambda a: np.asarray(a[index]), p) for p in self.parts)
        return out[0] if self.single else out

    def describe(self):
        return {"source": "arrays", "samples": self.n,
                "shapes": [_map_struct(lambda a: list(np.shape(a)[1:]), p) for p in self.parts]}


class _FolderSource:
    """Images decoded from files when a batch is loaded."""

    def __init__(self, files, labels, class_names, size, crop, mode, label_mode, interpolation,
                 draft):
        self.files, self.labels, self.class_names = files, labels, class_names
        self.size, self.crop, self.mode = size, crop, mode
        self.label_mode, self.interpolation, self.draft = label_mode, interpolation, draft
        self.channels = len(mode)
        self.single = labels is None or label_mode is None

    def __len__(self):
        return len(self.files)

    def _decode(self, Image, i):
        return _images.decode(Image, self.files[i], repr(self.files[i]), self.size, self.crop,
                              self.mode, resample=self.interpolation, draft=self.draft)

    def load(self, index):
        Image = _images.import_pillow("cconv.data (images from a folder)")
        index = np.asarray(index)
        if self.size is not None:
            x = np.empty((len(index),) + self.size + (self.channels,), np.float32)
            for j, i in enumerate(index):
                x[j] = self._decode(Image, i)
        else:
            images = [self._decode(Image, i) for i in index]
            for j, im in enumerate(images):
                if im.shape != images[0].shape:
                    raise ValueError(
                        f"images of one batch have different sizes: {self.files[index[0]]!r} is "
                        f"{images[0].shape}, {self.files[index[j]]!r} is {im.shape}; pass "
                        f"image_size=(height, width)")
            x = np.stack(images).astype(np.float32) if images else np.empty((0, 1, 1, self.channels),
                                                                             np.float32)
        if self.single:
            return x
        labels = self.labels[index]
        if self.label_mode == "categorical":
            y = np.zeros((len(index), len(self.class_names)), np.float32)
            y[np.arange(len(index)), labels] = 1.0
        elif self.label_mode == "binary":
            y = labels.astype(np.float32)[:, None]
        else:
            y = labels
        return x, y

    def describe(self):
        return {"source": "folder", "samples": len(self.files), "classes": self.class_names,
                "image_size": None if self.size is None else list(self.size),
                "crop": None if self.crop is None else list(self.crop), "color": self.mode,
                "label_mode": self.label_mode}


class _CachedSource:
    """Another source's samples, kept (in memory or in a file) once they have been loaded."""

    def __init__(self, source, path):
        self.source, self.path = source, None if path is None else os.fspath(path)
        self.single = source.single
        self.filled = np.zeros(len(source), bool)
        self.store = None
        self.lock = threading.Lock()

    def __len__(self):
        return len(self.source)

    def _allocate(self, batch):
        parts = (batch,) if self.single else batch
        n = len(self.source)
        store = []
        for k, a in enumerate(parts):
            shape = (n,) + a.shape[1:]
            if self.path is None:
                store.append(np.empty(shape, a.dtype))
            else:
                name = self.path if k == 0 else f"{self.path}.{k}"
                store.append(np.lib.format.open_memmap(name, mode="w+", dtype=a.dtype, shape=shape))
        self.store = store

    def load(self, index):
        index = np.asarray(index)
        with self.lock:
            missing = index[~self.filled[index]]
            if missing.size:
                missing = np.unique(missing)
                batch = self.source.load(missing)
                if self.store is None:
                    self._allocate(batch)
                for dst, a in zip(self.store, (batch,) if self.single else batch):
                    if a.shape[1:] != dst.shape[1:]:
                        raise ValueError(f"cache(): samples of shape {a.shape[1:]} after samples of "
                                         f"shape {dst.shape[1:]}; the samples of a cached dataset "
                                         f"must have one shape (pass image_size=)")
                    dst[missing] = a
                self.filled[missing] = True
            out = tuple(np.asarray(s[index]) for s in self.store)
        return out[0] if self.single else out

    def describe(self):
        return self.source.describe()


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------
class Dataset:
    """A sequence of elements (samples, or batches after :meth:`batch`), epoch by epoch.

    Make one with :meth:`from_arrays`, :meth:`from_folder` or
    :func:`image_dataset_from_directory`; every other method returns a new dataset and
    leaves this one unchanged. See the module docstring for the order of epochs, shards,
    maps and prefetching.

    Attributes
    ----------
    class_names : list of str or None
        The classes of a folder dataset (label ``i`` is ``class_names[i]``).
    """

    def __init__(self, _source, _index_ops=(), _sample_maps=(), _batch=None, _batch_maps=(),
                 _prefetch=0, class_names=None):
        if not isinstance(_source, (_ArraySource, _FolderSource, _CachedSource)):
            raise TypeError("make a Dataset with Dataset.from_arrays, Dataset.from_folder or "
                            "cconv.data.image_dataset_from_directory")
        self._source = _source
        self._index_ops = tuple(_index_ops)
        self._sample_maps = tuple(_sample_maps)
        self._batch = _batch
        self._batch_maps = tuple(_batch_maps)
        self._prefetch = _prefetch
        self.class_names = class_names
        self._iterations = 0

    def _replace(self, **changes):
        kw = dict(_source=self._source, _index_ops=self._index_ops, _sample_maps=self._sample_maps,
                  _batch=self._batch, _batch_maps=self._batch_maps, _prefetch=self._prefetch,
                  class_names=self.class_names)
        kw.update(changes)
        return Dataset(**kw)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(cls, x, y=None, sample_weight=None):
        """A dataset of the samples of arrays: ``(x[i], y[i])``, ``(x[i], y[i],
        sample_weight[i])`` or ``x[i]`` alone.

        ``x`` (and ``y``) may be a list or dict of arrays for several inputs (outputs).
        The arrays are not copied: a ``numpy.memmap`` streams from its file.
        """
        if sample_weight is not None and y is None:
            raise ValueError("sample_weight needs y")
        parts = [x] + ([y] if y is not None else []) + ([sample_weight] if sample_weight is not None else [])
        names = ("x", "y", "sample_weight")
        checked = []
        for name, p in zip(names, parts):
            if isinstance(p, dict):
                checked.append({k: _as_array(v, f"{name}[{k!r}]") for k, v in p.items()})
            elif isinstance(p, (list, tuple)) and p and all(hasattr(v, "shape") for v in p):
                checked.append([_as_array(v, f"{name}[{i}]") for i, v in enumerate(p)])
            else:
                checked.append(_as_array(p, name))
        return cls(_ArraySource(tuple(checked), single=y is None))

    @classmethod
    def from_folder(cls, directory, image_size=(256, 256), crop=None, color_mode="rgb",
                    labels="inferred", label_mode="int", class_names=None, interpolation="bilinear",
                    jpeg_draft=True, follow_links=False):
        """Images in ``directory``, one sub-folder per class, as ``(image, label)`` samples.

        Parameters
        ----------
        directory : str or os.PathLike
            ``directory/<class name>/**/<file>``: every file with an extension in
            :data:`IMAGE_EXTENSIONS`, in sub-folders too; hidden files and folders and other
            files are ignored (as Keras). Classes are the sub-folders in sorted order, files
            sorted within a class.
        image_size : (height, width), int or None, default (256, 256)
            Every image is resized to this (Keras's default). None keeps the decoded size;
            the images of a batch must then have one size.
        crop : (left, upper, right, lower) or None
            Box cut out of each image before resizing, in pixels of that image.
        color_mode : {"rgb", "grayscale", "rgba"}
        labels : "inferred" or None
            None: the dataset yields images only (all files under ``directory``).
        label_mode : {"int", "categorical", "binary", None}
            Integer labels (int64), one-hot rows (float32), or 0/1 of shape ``(N, 1)``
            (float32, exactly two classes); None as ``labels=None``.
        class_names : list of str, optional
            The class folders to use, in label order (default: all, sorted).
        interpolation : {"bilinear", "nearest", "bicubic", "lanczos", "area"}
            Resampling filter (Pillow's; all but "nearest" low-pass filter when shrinking).
        jpeg_draft : bool, default True
            Let the JPEG decoder shrink by 2, 4 or 8 while decoding when the output stays at
            least ``image_size`` (2-4x faster for a large reduction, pixels slightly
            different from a full decode followed by resampling).
        follow_links : bool, default False

        Returns
        -------
        Dataset
            Samples ``(x, y)``: ``x`` float32 of shape ``(height, width, channels)`` with
            values in ``[0, 255]`` (as Keras; add ``cconv.layers.Rescaling(1 / 255)`` to the
            model for ``[0, 1]``); unbatched and unshuffled.

        Raises
        ------
        FileNotFoundError
            ``directory`` does not exist.
        ValueError
            No class folder; a class folder without images (the message names it); unknown
            ``class_names``; bad arguments. A file that cannot be decoded raises a
            ValueError naming it when its batch is loaded.
        ImportError
            Pillow is missing (``pip install "cconv[data]"``), when a batch is loaded.
        """
        files, label_array, names = _index_directory(directory, labels, class_names, follow_links)
        if label_mode not in _LABEL_MODES:
            raise ValueError(f"label_mode must be 'int', 'categorical', 'binary' or None, got {label_mode!r}")
        if label_mode == "binary" and names is not None and len(names) != 2:
            raise ValueError(f"label_mode='binary' needs exactly 2 classes, {directory!r} has "
                             f"{len(names)}: {names}")
        if not isinstance(color_mode, str) or color_mode not in _COLOR_MODES:
            raise ValueError(f"color_mode must be 'rgb', 'grayscale' or 'rgba', got {color_mode!r}")
        if interpolation not in _images.RESAMPLING:
            raise ValueError(f"interpolation must be one of {_images.RESAMPLING}, got {interpolation!r}")
        size = _images.normalize_size(image_size, "image_size")
        box = _images.normalize_crop(crop)
        source = _FolderSource(files, label_array, names, size, box, _COLOR_MODES[color_mode],
                               label_mode if labels is not None else None, interpolation,
                               bool(jpeg_draft))
        return cls(source, class_names=names)

    # ---------------------------------------------------------------- transformations
    def _before_batch(self, what):
        if self._batch is not None:
            raise ValueError(f"{what} reorders samples: call it before batch() (cconv shuffles and "
                             f"shards samples, not batches)")

    def cache(self, path=None):
        """Keep the samples once loaded (decoded): later epochs read them instead of the files.

        Parameters
        ----------
        path : str or os.PathLike, optional
            None: in memory (the decoded dataset must fit). A file name: in ``.npy`` files
            there (``path``, ``path.1`` for the labels), read through ``numpy.memmap``, so the
            memory stays bounded; they are rewritten by every new cached dataset.

        Call it right after :meth:`from_folder` (it caches what the source yields, before
        shuffles, maps and batching). A dataset of arrays is returned unchanged.
        """
        if self._index_ops or self._sample_maps or self._batch is not None:
            raise ValueError("call cache() right after Dataset.from_folder(...), before shuffle, shard, "
                             "take, skip, map and batch")
        if isinstance(self._source, (_ArraySource, _CachedSource)):
            return self
        return self._replace(_source=_CachedSource(self._source, path))

    def shuffle(self, seed=None):
        """A new permutation of the samples every epoch: :func:`epoch_order` ``(n, seed,
        epoch)``.

        Parameters
        ----------
        seed : int or None
            None draws a seed from the operating system now (kept in the dataset: the
            epochs of one run differ, two runs differ too; a ``fit`` checkpoint made with it
            cannot be resumed by another dataset object). Pass a seed for reproducible
            training and for data-parallel processes.

        Unlike ``tf.data``'s buffered shuffle, every epoch is a full permutation.
        """
        self._before_batch("shuffle()")
        seed = int(np.random.SeedSequence().entropy) if seed is None else V.non_negative_int(seed, "seed")
        return self._replace(_index_ops=self._index_ops + (("shuffle", seed),))

    def shard(self, num_shards, index, drop_remainder=False):
        """Keep elements ``index, index + num_shards, ...`` of each epoch's order.

        With a shared shuffle seed, the ``num_shards`` shards of an epoch are disjoint and
        together hold every sample (every sample but the last ``n % num_shards`` of the
        epoch's order with ``drop_remainder=True``, which gives every shard ``n //
        num_shards`` elements).
        """
        self._before_batch("shard()")
        num_shards = V.positive_int(num_shards, "num_shards")
        index = V.non_negative_int(index, "index")
        if index >= num_shards:
            raise ValueError(f"index must be < num_shards ({num_shards}), got {index}")
        return self._replace(_index_ops=self._index_ops + (("shard", num_shards, index,
                                                            bool(drop_remainder)),))

    def take(self, count):
        """The first ``count`` samples of each epoch's order."""
        self._before_batch("take()")
        return self._replace(_index_ops=self._index_ops + (("take", V.non_negative_int(count, "count")),))

    def skip(self, count):
        """All but the first ``count`` samples of each epoch's order."""
        self._before_batch("skip()")
        return self._replace(_index_ops=self._index_ops + (("skip", V.non_negative_int(count, "count")),))

    def map(self, fn):
        """Apply ``fn`` to every sample (before :meth:`batch`) or every batch (after it):
        ``fn(x, y)`` for a tuple element, ``fn(x)`` otherwise; what it returns is the new
        element. It runs in the prefetch thread when the dataset is prefetched."""
        if not callable(fn):
            raise TypeError(f"map needs a function, got {type(fn).__name__}")
        if self._batch is None:
            return self._replace(_sample_maps=self._sample_maps + (fn,))
        return self._replace(_batch_maps=self._batch_maps + (fn,))

    def batch(self, batch_size, drop_remainder=False):
        """Group consecutive samples into batches of ``batch_size`` (the last one smaller
        unless ``drop_remainder``)."""
        if self._batch is not None:
            raise ValueError("the dataset is already batched")
        size = V.positive_int(batch_size, "batch_size")
        return self._replace(_batch=(size, bool(drop_remainder)))

    def prefetch(self, buffer_size=2):
        """Produce up to ``buffer_size`` elements ahead in a background thread (0: none)."""
        return self._replace(_prefetch=V.non_negative_int(buffer_size, "buffer_size"))

    # ---------------------------------------------------------------- iteration
    @property
    def batched(self):
        """Whether the elements are batches."""
        return self._batch is not None

    @property
    def batch_size(self):
        """The batch size, or None before :meth:`batch`."""
        return None if self._batch is None else self._batch[0]

    def num_samples(self):
        """Samples per epoch (after shuffles, shards, take and skip)."""
        n = len(self._source)
        for op in self._index_ops:
            if op[0] == "shard":
                _, k, i, drop = op
                m = n - n % k if drop else n
                n = len(range(i, m, k))
            elif op[0] == "take":
                n = min(n, op[1])
            elif op[0] == "skip":
                n = max(n - op[1], 0)
        return n

    def __len__(self):
        """Elements per epoch: samples, or batches after :meth:`batch`."""
        n = self.num_samples()
        if self._batch is None:
            return n
        size, drop = self._batch
        return n // size if drop else -(-n // size)

    def order(self, epoch=0):
        """The source positions of the samples of epoch ``epoch``, in order."""
        epoch = V.non_negative_int(epoch, "epoch")
        idx = np.arange(len(self._source))
        for op in self._index_ops:
            if op[0] == "shuffle":
                idx = idx[epoch_order(len(idx), op[1], epoch)]
            elif op[0] == "shard":
                _, k, i, drop = op
                if drop:
                    idx = idx[:len(idx) - len(idx) % k]
                idx = idx[i::k]
            elif op[0] == "take":
                idx = idx[:op[1]]
            else:
                idx = idx[op[1]:]
        return idx

    def epoch(self, epoch=0, part=None):
        """An iterator over the elements of epoch ``epoch`` (prefetched if asked); ``part``
        as in :meth:`batches`."""
        order = self.order(epoch)
        if part is not None and self._batch is None:
            raise ValueError("part= picks samples of each batch: call .batch(batch_size) first")
        if self._prefetch:
            return _prefetched(lambda: self._produce(order, part), self._prefetch)
        return self._produce(order, part)

    def __iter__(self):
        """Epoch 0 on the first loop over the dataset, epoch 1 on the second, ..."""
        e = self._iterations
        self._iterations += 1
        return self.epoch(e)

    def batches(self, epoch, part=None):
        """The batches of epoch ``epoch``: what ``fit`` iterates (see
        :func:`cconv.training.fit`).

        Parameters
        ----------
        epoch : int
        part : callable, optional
            ``part(m) -> (lo, hi)``: load only samples ``lo .. hi - 1`` of each batch of
            ``m`` (data-parallel ``fit`` passes each process's part of the global batch), and
            yield None for a batch whose part is empty. Batch maps then see that part.
        """
        if self._batch is None:
            raise ValueError("the dataset yields single samples: call .batch(batch_size) before "
                             "passing it to fit, evaluate or predict")
        return self.epoch(epoch, part)

    def signature(self):
        """What a ``fit`` checkpoint records to refuse resuming with other data."""
        return {"dataset": self._source.describe(),
                "order": [list(op) for op in self._index_ops],
                "batch": None if self._batch is None else list(self._batch)}

    def _produce(self, order, part=None):
        source = self._source
        if self._batch is None:
            for i in order:
                yield self._load_samples(np.array([i]))[0]
            return
        size, drop = self._batch
        stop = len(order) - len(order) % size if drop else len(order)
        for lo in range(0, stop, size):
            index = order[lo:lo + size]
            if part is not None:
                a, z = part(len(index))
                if a >= z:
                    yield None
                    continue
                index, lo = index[a:z], lo + a
            if self._sample_maps:
                element = _stack(self._load_samples(index), f"batch of samples {lo}-{lo + len(index) - 1}")
            else:
                element = source.load(index)
            for fn in self._batch_maps:
                element = _call_map(fn, element)
            yield element

    def _load_samples(self, index):
        """One element per position, each passed through the sample maps."""
        batch = self._source.load(index)
        out = []
        for j in range(len(index)):
            if isinstance(batch, tuple):
                element = tuple(_map_struct(lambda a: a[j], p) for p in batch)
            else:
                element = _map_struct(lambda a: a[j], batch)
            for fn in self._sample_maps:
                element = _call_map(fn, element)
            out.append(element)
        return out

    def __repr__(self):
        d = self._source.describe()
        parts = [f"{d['source']}, {d['samples']} samples"]
        for op in self._index_ops:
            parts.append(f"{op[0]}{tuple(op[1:])}")
        if self._sample_maps:
            parts.append(f"map x{len(self._sample_maps)}")
        if self._batch is not None:
            parts.append(f"batch({self._batch[0]}{', drop_remainder=True' if self._batch[1] else ''})")
        if self._batch_maps:
            parts.append(f"map x{len(self._batch_maps)}")
        if self._prefetch:
            parts.append(f"prefetch({self._prefetch})")
        return f"Dataset({' -> '.join(parts)})"


# --------------------------------------------------------------------------------------
# Prefetching
# --------------------------------------------------------------------------------------
def _prefetched(make_iterator, depth):
    """Iterate ``make_iterator()`` in a background thread, ``depth`` elements ahead.

    The thread stops when the iteration ends, fails or is abandoned (this generator closed
    or garbage-collected); an exception raised in the thread is raised here.
    """
    q = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for element in make_iterator():
                if not put(("element", element)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))

    thread = threading.Thread(target=work, name="cconv-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "element":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.05)


# --------------------------------------------------------------------------------------
# Folders of images
# --------------------------------------------------------------------------------------
def _image_files(folder, follow_links):
    """Sorted image files under ``folder`` (recursively; hidden entries skipped). Only regular
    files are listed (a FIFO or device named ``*.jpg`` would block its reader), and with
    ``follow_links`` a directory already visited (a link loop) is not entered again."""
    found, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=follow_links):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = os.path.join(root, name)
            if (not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
                    and os.path.isfile(path)):
                found.append(path)
    return sorted(found)


def _index_directory(directory, labels, class_names, follow_links):
    """(files, labels array or None, class names or None) of a class-folder layout."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        if not os.path.exists(directory):
            raise FileNotFoundError(f"image folder {directory!r} does not exist")
        raise ValueError(f"{directory!r} is not a folder")
    if labels is None:
        files = _image_files(directory, follow_links)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {directory!r}")
        return files, None, None
    if labels != "inferred":
        raise ValueError(f"labels must be 'inferred' (one sub-folder per class) or None, got {labels!r}")
    folders = sorted(e.name for e in os.scandir(directory)
                     if e.is_dir(follow_symlinks=follow_links) and not e.name.startswith("."))
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
            raise TypeError(f"class_names must be a list of folder names, got {class_names!r}")
        class_names = list(class_names)
        missing = [c for c in class_names if c not in folders]
        if missing or len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names {class_names} must name distinct sub-folders of "
                             f"{directory!r}; missing {missing}; the sub-folders are {folders}")
        folders = class_names
    if not folders:
        raise ValueError(f"{directory!r} has no sub-folders: put the images of each class in a "
                         f"sub-folder named after the class (or pass labels=None)")
    files, label_list = [], []
    for label, name in enumerate(folders):
        found = _image_files(os.path.join(directory, name), follow_links)
        if not found:
            raise ValueError(f"class folder {os.path.join(directory, name)!r} holds no image "
                             f"files ({', '.join(IMAGE_EXTENSIONS)}): remove it or add its images")
        files += found
        label_list += [label] * len(found)
    return files, np.asarray(label_list, dtype=np.int64), folders


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None,
                                 color_mode="rgb", batch_size=32, image_size=(256, 256),
                                 shuffle=True, seed=None, validation_split=None, subset=None,
                                 interpolation="bilinear", follow_links=False, crop=None,
                                 prefetch=2):
    """Keras's ``image_dataset_from_directory``: a batched, shuffled :class:`Dataset` of
    the images in ``directory`` (one sub-folder per class).

    Parameters
    ----------
    directory, labels, label_mode, class_names, color_mode, image_size, interpolation, \
follow_links, crop
        As :meth:`Dataset.from_folder` (images float32 in ``[0, 255]``).
    batch_size : int or None, default 32
        None yields single samples.
    shuffle : bool, default True
        Shuffle the files every epoch (:meth:`Dataset.shuffle` with ``seed``).
    seed : int, optional
        Needed with ``validation_split`` and ``shuffle`` (the two subsets must be split the
        same way by both calls).
    validation_split : float in (0, 1), optional
        With ``subset``: the files are permuted with ``seed`` (when ``shuffle``), and the
        last ``int(validation_split * n)`` of them are the validation subset.
    subset : {"training", "validation", "both"}, optional
        "both" returns ``(training, validation)``.
    prefetch : int, default 2
        Batches decoded ahead in a background thread (0: none).

    Returns
    -------
    Dataset, or a tuple of two with ``subset="both"``
    """
    ds = Dataset.from_folder(directory, image_size=image_size, crop=crop, color_mode=color_mode,
                             labels=labels, label_mode=label_mode, class_names=class_names,
                             interpolation=interpolation, follow_links=follow_links)
    if (validation_split is None) != (subset is None):
        raise ValueError(f"validation_split and subset go together, got validation_split="
                         f"{validation_split!r} and subset={subset!r}")
    if seed is not None:
        seed = V.non_negative_int(seed, "seed")
    subsets = [ds]
    if validation_split is not None:
        split = V.number(validation_split, "validation_split", low=0.0, high=1.0, low_open=True,
                         high_open=True)
        if subset not in ("training", "validation", "both"):
            raise ValueError(f"subset must be 'training', 'validation' or 'both', got {subset!r}")
        if shuffle and seed is None:
            raise ValueError("validation_split with shuffle=True needs a seed, so that the "
                             "training and validation subsets are split the same way")
        n = len(ds._source)
        n_val = int(split * n)
        if n_val == 0 or n_val == n:
            raise ValueError(f"validation_split={validation_split} of {n} files leaves {n_val} for "
                             f"validation and {n - n_val} for training")
        perm = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        parts = {"training": perm[:n - n_val], "validation": perm[n - n_val:]}
        wanted = ["training", "validation"] if subset == "both" else [subset]
        subsets = [_subset(ds, parts[w]) for w in wanted]
    out = []
    for d in subsets:
        if shuffle:
            d = d.shuffle(seed)
        if batch_size is not None:
            d = d.batch(batch_size)
        if prefetch:
            d = d.prefetch(prefetch)
        out.append(d)
    return tuple(out) if subset == "both" else out[0]


def _subset(ds, positions):
    """A folder dataset restricted to the files at ``positions`` (in that order)."""
    s = ds._source
    positions = np.asarray(positions)
    source = _FolderSource([s.files[i] for i in positions],
                           None if s.labels is None else s.labels[positions], s.class_names, s.size,
                           s.crop, s.mode, s.label_mode, s.interpolation, s.draft)
    return Dataset(source, class_names=ds.class_names)
