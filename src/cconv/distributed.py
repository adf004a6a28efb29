"""Data-parallel training across processes and machines with MPI (mpi4py).

One switch in the training script, ``fit(..., distributed=True)``, and MPI's launcher::

    model.fit(x, y, epochs=20, batch_size=256, distributed=True)

    mpirun -n 4 python train.py                        # 4 processes on this machine
    mpirun -n 64 --hostfile hosts python train.py      # 64 processes on several machines

Every process (a *rank*) runs the same script and passes ``fit`` the same arrays (all of
them: each rank reads only its part of every batch). Install with ``pip install
"cconv[mpi]"`` (mpi4py and the MPICH wheel) or build mpi4py against your cluster's MPI.
Run without ``mpirun``, ``distributed=True`` trains in one process, as ``fit`` does.

What ``fit(..., distributed=True)`` does
----------------------------------------
- **Start.** Rank 0's weights, layer state, optimizer state and random generators are
  broadcast to every rank, so the ranks start identical whatever their seeds. A resumed
  fit reads its checkpoint on rank 0 only and broadcasts it (with the history and the
  callbacks' states). Every rank's data shapes and settings are checked to be rank 0's.
- **Batches.** ``batch_size`` is the *global* batch, as in Keras's distribution
  strategies: training on 4 ranks takes the same steps, on the same batches, as training
  in one process (Horovod and PyTorch's DDP count per process instead; to give every rank
  more work, raise ``batch_size``). The order of the samples comes from the model's
  shuffling generator, which the broadcast makes identical on all ranks, so it is
  reshuffled every epoch identically everywhere; rank ``r`` of ``p`` trains on the ``r``-th
  contiguous part of each global batch of ``m`` samples, ``[r*m//p, (r+1)*m//p)`` (:func:`shard`:
  parts differ by at most one sample and never overlap; with fewer samples than ranks some
  parts are empty).
- **Gradients.** Each rank's gradient (the mean over its part) is weighted by its part's
  size, the weighted gradients are summed with ``Allreduce`` and the sums divided by the
  global batch's size:
  every rank gets the gradient of the mean over the global batch, also when the parts are
  unequal or empty, then steps its optimizer (clipping included) on identical numbers. The
  gradients travel in a few contiguous buffers (*buckets* of at least ``bucket_bytes``,
  default 16 MiB, whole layers each, in the order the backward pass finishes them; the
  paper network's 2.9 MB are one bucket), each summed by a blocking ``Allreduce`` after the
  backward pass. With ``DataParallel(overlap=True)`` a bucket's non-blocking ``Iallreduce``
  starts instead as soon as the backward pass has finished its layers, and every later layer
  lets MPI advance it (``Testall``) while the earlier layers are differentiated. On our
  2-core machine (MPICH, shared memory) that halved the sums left after the backward pass
  but not the time spent on them, which moved into the ``Testall`` calls: overlapping did
  not pay there, so it is off by default (``bench/bench_distributed.py`` measures it; the
  README has the figures). It can pay where the network card moves the data on its own.
- **Logs.** The loss and the metrics of every batch, and the validation results, are
  means over all ranks weighted by their sample counts (each rank evaluates its part of
  the validation data), so the history, the progress bar and every callback see the
  figures of the global batch, identical on all ranks.
- **Batch normalisation.** Per rank: each rank normalises its part of a batch with that
  part's own mean and variance (PyTorch's DDP without ``SyncBatchNorm`` and Horovod do the
  same), so a network with ``BatchNorm2D`` trains as with a batch of ``batch_size / p``
  samples per normalisation; keep that at 16 or more. At the end of every epoch (before
  validation and checkpoints) every non-trainable state array, such as the running mean
  and variance, is replaced by its mean over the ranks, so all ranks hold the same model.
- **Checks.** At the end of every epoch the ranks compare checksums of all their weights
  and stop with a ``RuntimeError`` if they differ.
- **Output and files.** Only rank 0 prints (the other ranks' standard output is
  discarded during ``fit``; their warnings and errors still reach standard error) and
  writes checkpoints; callbacks whose class sets ``rank_zero_only = True``
  (:class:`cconv.callbacks.ModelCheckpoint`, :class:`cconv.callbacks.CSVLogger`) run on rank
  0 only; the others run on every rank with the same logs, so they decide the same way
  (``stop_training`` is taken from rank 0 all the same).
- **Resume.** ``fit(checkpoint=..., resume=...)`` works as in one process: rank 0 writes
  the checkpoint with every rank's random generators (dropout masks), and a resumed run on
  the same number of ranks ends with the same weights, bit for bit, as an uninterrupted
  one. On another number of ranks it continues the same training (same batches and
  gradients up to rounding) with new dropout streams for the ranks other than 0.
- **Failures.** A rank whose ``fit`` raises prints its traceback, each line prefixed with
  ``[rank r/p]``, to standard error and calls ``MPI_Abort``, which ends every rank: the job
  stops with that message instead of hanging in the next collective call. After
  :func:`init` an exception that nothing catches does the same anywhere in the script.
  (A :class:`cconv.training.NonFiniteLossError` is raised on every rank alike and is
  left to the script.)
- **Threads.** Each rank's default thread count (for cconv's kernels and the BLAS
  libraries) is its share of its node's cores: the CPUs it may use divided by the number
  of ranks on its node (``MPI_COMM_TYPE_SHARED``) whose CPU sets overlap its own, so
  ranks x threads never oversubscribe a node, with or without process binding.
  ``OMP_NUM_THREADS`` or :func:`cconv.set_num_threads` override it.

``evaluate``, ``predict`` and ``train_on_batch`` are not distributed: after a distributed
fit every rank holds the same model, and each runs them on the data it is given.

Datasets and generators
-----------------------
``fit(dataset, distributed=True)`` takes the same :class:`cconv.data.Dataset` on every rank
(not one ``shard``-ed per rank): its batches are the global batches, and each rank loads
and decodes only its contiguous part ``[r*m//p, (r+1)*m//p)`` of each
(``Dataset.batches(epoch, part=...)``), validation datasets too. A shuffled dataset's
epoch order is :func:`cconv.data.epoch_order` of its seed and the epoch, a pure function,
so every rank sees the same global batches in every epoch, after a resume too; give
``shuffle`` a seed (with ``seed=None`` each rank would draw its own, and ``fit`` refuses
datasets whose settings differ between ranks). A rank whose part of a short last batch is
empty still takes part in the step's collective calls (with a zero gradient and no
samples). Other sources of batches (generators, sequences) are loaded whole on every rank
and cut the same way, so they must yield the same batches on every rank. Metrics are
merged over the ranks (accuracy from the summed counts, precision/recall/F1 from the summed
confusion matrices), and only rank 0 writes TensorBoard and CSV logs.

A custom training loop uses the same pieces: :func:`init`, :func:`shard`,
:func:`broadcast_model`, :class:`GradientReducer` and :func:`reduce_means`.
"""
import contextlib
import json
import os
import sys
import time
import traceback
import warnings
import zlib

import numpy as np

from . import _config
from . import callbacks as _callbacks
from . import saving
from ._printable import printable

__all__ = ["init", "World", "rank", "size", "shard", "broadcast_model", "reduce_means",
           "GradientReducer", "DataParallel", "DEFAULT_BUCKET_BYTES"]

#: Default size of a gradient bucket (the message of one collective call): large enough
#: that the per-message latency is negligible, small enough to bound the extra memory.
DEFAULT_BUCKET_BYTES = 16 << 20


def _mpi():
    """mpi4py's MPI module, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:   # RuntimeError: mpi4py found no MPI library
        raise ImportError(
            f"cconv.distributed needs mpi4py and an MPI library ({exc}): install them with "
            "pip install \"cconv[mpi]\" (mpi4py and the MPICH wheel), or build mpi4py against "
            "your cluster's MPI") from exc
    return MPI


def _affinity():
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:          # not Linux: assume every rank may use every CPU
        return frozenset(range(os.cpu_count() or 1))


class World:
    """The processes of an MPI job as cconv uses them.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        cconv works on a duplicate of it, so its messages never mix with the script's own.

    Attributes
    ----------
    comm : mpi4py.MPI.Comm
        The duplicate.
    rank, size : int
        This process's number and the number of processes.
    local_rank, local_size : int
        The same among the processes on this node (``MPI_COMM_TYPE_SHARED``).
    sharing : int
        The processes on this node whose CPU sets overlap this one's, itself included.
    cores : int
        This process's share of its node's CPUs: the CPUs it may use divided by the number
        of processes on the node whose CPU sets overlap its own (itself included).
    """

    def __init__(self, comm):
        MPI = _mpi()
        self.comm = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            masks = node.allgather(_affinity())
        finally:
            node.Free()
        mine = masks[self.local_rank]
        self.sharing = max(1, sum(1 for m in masks if m & mine))
        self.cores = max(1, _config.available_cpus() // self.sharing)

    @property
    def is_root(self):
        return self.rank == 0

    def abort(self, exc_info=None, code=1, brief=False):
        """Print ``exc_info``'s traceback (each line prefixed with the rank; only its last
        line if ``brief``) to standard error and end every process of the job with
        ``MPI_Abort``."""
        prefix = f"[rank {self.rank}/{self.size}] "
        lines = []
        if exc_info is not None and exc_info[0] is not None:
            lines = "".join(traceback.format_exception(*exc_info)).rstrip("\n").split("\n")
            if brief:
                lines = "".join(traceback.format_exception_only(*exc_info[:2])).rstrip("\n").split("\n")
        lines.append(f"cconv.distributed: rank {self.rank} failed; ending all {self.size} ranks "
                     f"(MPI_Abort)")
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        sys.stderr.write("".join(prefix + printable(line) + "\n" for line in lines))
        sys.stderr.flush()
        self.comm.Abort(code)

    def __repr__(self):
        return (f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"local_size={self.local_size}, cores={self.cores})")


_world = None


def init(comm=None):
    """Start (once) and return the :class:`World` of this MPI job.

    The first call also sets this process's default thread count to its share of the
    node's cores (for cconv's kernels and for the BLAS libraries; ``OMP_NUM_THREADS`` or
    :func:`cconv.set_num_threads` still override it), warns when the threads of the node's
    ranks add up to more than its cores, and, when the job has several ranks, makes an
    uncaught exception end the whole job (:meth:`World.abort`) instead of leaving the
    other ranks waiting. ``fit(..., distributed=True)`` calls it.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The processes to train with (default ``MPI.COMM_WORLD``); only the first call's
        counts.

    Raises
    ------
    ImportError
        mpi4py or an MPI library is missing.
    """
    global _world
    if _world is None:
        MPI = _mpi()
        world = World(MPI.COMM_WORLD if comm is None else comm)
        _config.set_default_num_threads(world.cores)
        _limit_blas(_config.get_num_threads())
        threads = _config.get_num_threads()
        cpus = _config.available_cpus()
        if world.local_rank == 0 and threads * world.sharing > cpus:
            warnings.warn(
                f"cconv.distributed: {world.sharing} ranks x {threads} threads share {cpus} CPUs on "
                f"this node: they oversubscribe it (start at most {cpus} ranks per node, and leave "
                f"OMP_NUM_THREADS unset or at most {world.cores})", RuntimeWarning, stacklevel=2)
        if world.size > 1:
            previous = sys.excepthook

            def abort_on_uncaught(exc_type, exc, tb):
                if issubclass(exc_type, SystemExit):
                    return previous(exc_type, exc, tb)
                world.abort((exc_type, exc, tb))

            sys.excepthook = abort_on_uncaught
        _world = world
    return _world


def _limit_blas(n):
    """Cap the BLAS libraries' thread pools at ``n`` (cconv's kernels cap them inside
    their own calls; this covers numpy's calls in between)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n, user_api="blas")


def rank():
    """This process's rank (0 without ``mpirun``); starts MPI (:func:`init`)."""
    return init().rank


def size():
    """The number of processes of the job (1 without ``mpirun``); starts MPI (:func:`init`)."""
    return init().size


def shard(m, rank, size):
    """The part ``(lo, hi)`` of a global batch of ``m`` samples that ``rank`` of ``size`` trains on.

    Contiguous and disjoint, sizes ``m // size`` or ``m // size + 1``, covering ``[0, m)``
    in rank order: ``lo = rank * m // size``, ``hi = (rank + 1) * m // size``.
    """
    return rank * m // size, (rank + 1) * m // size


# --------------------------------------------------------------------------------------
# Broadcasts and reductions
# --------------------------------------------------------------------------------------
def _bcast_array_dict(comm, d, root=0):
    """Broadcast a dict of arrays and scalars from ``root``: the structure pickled, the
    arrays as raw buffers. Returns the dict (root's own object on root)."""
    if comm.Get_rank() == root:
        layout = {k: (("array", v.shape, v.dtype.str) if isinstance(v, np.ndarray) else ("value", v))
                  for k, v in d.items()}
    else:
        layout = None
    layout = comm.bcast(layout, root=root)
    out = d if comm.Get_rank() == root else {}
    for k, spec in layout.items():
        if spec[0] == "array":
            a = np.ascontiguousarray(d[k]) if comm.Get_rank() == root else np.empty(spec[1], np.dtype(spec[2]))
            comm.Bcast(a, root=root)
            out[k] = a
        else:
            out[k] = spec[1]
    return out


def broadcast_model(model, comm=None, root=0):
    """Make every rank's model identical to ``root``'s: every weight and state array,
    the optimizer's state (if compiled) and the random generators.

    Parameters
    ----------
    model : Model
        Built, with the same architecture on every rank.
    comm : mpi4py.MPI.Comm, optional
        Default: the :func:`init` world's.
    """
    comm = init().comm if comm is None else comm
    for layer in model.layers:
        for _, _, a in layer.weights():
            comm.Bcast(a, root=root)
    if model.optimizer is not None and model.compiled:
        state = _bcast_array_dict(comm, model.optimizer.state_dict(), root)
        if comm.Get_rank() != root:
            model.optimizer.load_state_dict(state)
    rng = comm.bcast(model.get_rng_state() if comm.Get_rank() == root else None, root=root)
    if comm.Get_rank() != root:
        model.set_rng_state(rng)


def reduce_means(logs, n, comm=None):
    """Means over all ranks of per-rank means, weighted by the ranks' sample counts.

    Parameters
    ----------
    logs : dict of str to float
        This rank's means over its ``n`` samples (empty when ``n`` is 0).
    n : int

    Returns
    -------
    dict
        For each key, ``sum(n_r * logs_r[key]) / sum(n_r)`` over the ranks that have it,
        computed in rank order, so that every rank gets the same bits. Keys in the order
        of the first rank that has samples.
    """
    comm = init().comm if comm is None else comm
    return _weighted_means(comm.allgather((int(n), logs)))


def _weighted_means(parts):
    keys = []
    for n, logs in parts:
        if n:
            keys += [k for k in logs if k not in keys]
    out = {}
    for k in keys:
        num = den = 0.0
        for n, logs in parts:
            if n and k in logs:
                num += n * float(logs[k])
                den += n
        out[k] = num / den
    return out


class _Bucket:
    """One contiguous buffer holding the gradients of consecutive layers."""

    __slots__ = ("buffer", "layers", "pending", "request")

    def __init__(self, dtype, size):
        self.buffer = np.empty(size, dtype=dtype)
        self.layers = []          # [(layer, [(flat grad view, offset)])]
        self.pending = 0
        self.request = None


class GradientReducer:
    """Averages a model's gradients over the ranks, weighted by each rank's part of the
    global batch, in buckets (see the module docstring).

    Parameters
    ----------
    model : Model
        Built; its trainable layers' gradients are reduced.
    world : World, optional
        Default :func:`init`'s.
    bucket_bytes : int, default DEFAULT_BUCKET_BYTES
        A bucket is closed once it holds at least this many bytes; a layer is never split.
    overlap : bool, default False
        Start each bucket's ``Iallreduce`` from :meth:`grads_ready`, during the backward
        pass; else reduce every bucket with ``Allreduce`` in :meth:`finish`.

    A step of a custom loop::

        reducer.begin(len(xs[0]))         # this rank's samples of the global batch
        logs, finite, _ = cconv.training.loss_and_gradients(
            model, xs, ys, plan, training=True, grads_ready=reducer.grads_ready)
        reducer.finish(n_global)          # the grads now hold the global batch's gradient
        model.optimizer.step()

    Attributes
    ----------
    stats : dict
        ``steps``; ``pack_s``, seconds spent copying gradients into the buckets and starting
        them (:meth:`grads_ready`, :meth:`flush`); ``reduce_s``, seconds in :meth:`reduce`
        (the sums the backward pass did not hide, and the copies back); ``bytes`` (per
        step) and ``buckets``.
    """

    def __init__(self, model, world=None, bucket_bytes=DEFAULT_BUCKET_BYTES, overlap=False):
        self.world = init() if world is None else world
        self.overlap = bool(overlap)
        self._MPI = _mpi()
        self._buckets = []
        self._where = {}                   # id(layer) -> index of its bucket
        current, nbytes, dtype = [], 0, None
        for layer in reversed(model.layers):          # the order the backward pass ends them
            grads = [g for _, _, g in layer.parameters()]
            if not grads:
                continue
            if current and (grads[0].dtype != dtype or any(g.dtype != dtype for g in grads)):
                self._close(current)
                current, nbytes = [], 0
            dtype = grads[0].dtype
            if any(g.dtype != dtype for g in grads):
                raise ValueError(f"layer {layer.name!r} has gradients of several dtypes")
            current.append((layer, grads))
            nbytes += sum(g.nbytes for g in grads)
            if nbytes >= bucket_bytes:
                self._close(current)
                current, nbytes = [], 0
        if current:
            self._close(current)
        self.stats = {"steps": 0, "pack_s": 0.0, "reduce_s": 0.0, "buckets": len(self._buckets),
                      "bytes": sum(b.buffer.nbytes for b in self._buckets)}
        self._scale = 1.0
        self._inv_total = 1.0
        self._next = 0
        self._done = set()
        if not self.overlap:
            self.grads_ready = None

    def _close(self, layers):
        size = sum(g.size for _, grads in layers for g in grads)
        bucket = _Bucket(layers[0][1][0].dtype, size)
        offset = 0
        for layer, grads in layers:
            views = []
            for g in grads:
                views.append((g.reshape(-1), offset))
                offset += g.size
            bucket.layers.append((layer, views))
            self._where[id(layer)] = len(self._buckets)
        self._buckets.append(bucket)

    def begin(self, n_local):
        """Start a step in which this rank's gradients are the mean over its ``n_local``
        samples: they go into the buckets multiplied by ``n_local``, so that the sums over
        the ranks divided by the global batch's size (:meth:`reduce`) are its mean."""
        self._scale = float(n_local)
        for b in self._buckets:
            b.pending = len(b.layers)
            b.request = None
        self._next = 0
        self._done = set()

    def _pack(self, bucket, layer, views):
        dt = bucket.buffer.dtype.type
        for flat, offset in views:
            out = bucket.buffer[offset:offset + flat.size]
            if self._scale == 1.0:
                np.copyto(out, flat)
            elif self._scale == 0.0:
                out.fill(0)
            else:
                np.multiply(flat, dt(self._scale), out=out)
        self._done.add(id(layer))
        bucket.pending -= 1

    def _start_ready(self):
        # Buckets start in index order on every rank: MPI needs the same order of
        # collective calls everywhere, whatever order the layers finish in.
        MPI = self._MPI
        while self._next < len(self._buckets) and self._buckets[self._next].pending == 0:
            b = self._buckets[self._next]
            b.request = self.world.comm.Iallreduce(MPI.IN_PLACE, b.buffer, op=MPI.SUM)
            self._next += 1

    def grads_ready(self, layer):
        """Called by the backward pass when ``layer``'s gradients are final: copies them
        (weighted) into their bucket and starts the buckets that are complete. Every call
        (layers without weights too) also lets MPI advance the buckets in flight: most MPI
        libraries move a non-blocking collective on only inside MPI calls."""
        t = time.perf_counter()
        k = self._where.get(id(layer))
        if k is not None and id(layer) not in self._done:
            bucket = self._buckets[k]
            for lay, views in bucket.layers:
                if lay is layer:
                    self._pack(bucket, lay, views)
            self._start_ready()
        if self._next:
            self._MPI.Request.Testall([b.request for b in self._buckets[:self._next]])
        self.stats["pack_s"] += time.perf_counter() - t

    def finish(self, n_total):
        """Send what is left, wait for every bucket and copy the sums divided by
        ``n_total`` (the global batch's samples) back into the gradients: each rank then
        holds the global batch's mean gradient."""
        self.flush()
        self.reduce(n_total)

    def flush(self):
        """Pack the layers the backward pass did not report (all of them without
        ``grads_ready``) and, with overlap, start every remaining bucket."""
        t = time.perf_counter()
        for bucket in self._buckets:
            for layer, views in bucket.layers:
                if id(layer) not in self._done:
                    self._pack(bucket, layer, views)
        if self.overlap:
            self._start_ready()
        self.stats["pack_s"] += time.perf_counter() - t

    def reduce(self, n_total):
        """Sum the buckets (blocking ``Allreduce``, or wait for the ``Iallreduce`` calls)
        and copy the sums divided by ``n_total`` back into the gradients (zeros when
        ``n_total`` is 0)."""
        t = time.perf_counter()
        if self.overlap:
            self._MPI.Request.Waitall([b.request for b in self._buckets])
        else:
            for b in self._buckets:
                self.world.comm.Allreduce(self._MPI.IN_PLACE, b.buffer, op=self._MPI.SUM)
        for b in self._buckets:
            inv = b.buffer.dtype.type(1.0 / n_total if n_total else 0.0)
            for _, views in b.layers:
                for flat, offset in views:
                    np.multiply(b.buffer[offset:offset + flat.size], inv, out=flat)
        self.stats["reduce_s"] += time.perf_counter() - t
        self.stats["steps"] += 1


# --------------------------------------------------------------------------------------
# fit(..., distributed=True)
# --------------------------------------------------------------------------------------
def _derived_state(state, rank):
    """A new generator state for ``rank``, derived from ``state`` (a bit generator's)."""
    bit_generator = getattr(np.random, state["bit_generator"])
    g = np.random.Generator(bit_generator())
    g.bit_generator.state = state
    entropy = [int(v) for v in g.integers(0, 2**63 - 1, size=4)]
    return bit_generator(np.random.SeedSequence(entropy, spawn_key=(rank,))).state


def _checksum(model):
    crc = 0
    for layer in model.layers:
        for _, _, a in layer.weights():
            crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
    return crc


class _RankState(_callbacks.Callback):
    """fit's bookkeeping across ranks at the end of every epoch (it runs after the
    user's callbacks): rank 0's ``stop_training`` for all, and, when fit writes
    checkpoints, every rank's random generators, which its state holds."""

    def __init__(self, world, checkpointing):
        super().__init__()
        self.world = world
        self.checkpointing = checkpointing
        self.saved = None              # {"ranks": p, "layer_rngs": [per rank]} (rank 0)

    def on_epoch_end(self, epoch, logs=None):
        comm = self.world.comm
        self.model.stop_training = bool(comm.bcast(bool(self.model.stop_training), root=0))
        if self.checkpointing:
            states = comm.gather(self.model.get_rng_state()["layer_rngs"], root=0)
            if self.world.is_root:
                self.saved = {"ranks": self.world.size, "layer_rngs": states}

    def state_dict(self):
        return {} if self.saved is None else dict(self.saved)

    def load_state_dict(self, state):
        self.saved = dict(state) if state else None

    def assign_generators(self, model):
        """Give this rank its own dropout (layer) generators: the saved ones of a resumed
        run on as many ranks, else streams derived from rank 0's (rank 0 keeps its own, so
        one rank trains as ``fit`` without ``distributed``)."""
        saved = self.saved
        if saved and saved.get("ranks") == self.world.size:
            model.set_rng_state(dict(model.get_rng_state(), layer_rngs=saved["layer_rngs"][self.world.rank]))
        elif self.world.rank > 0:
            rng = model.get_rng_state()
            layers = {name: {key: _derived_state(st, self.world.rank) for key, st in states.items()}
                      for name, states in rng["layer_rngs"].items()}
            model.set_rng_state(dict(rng, layer_rngs=layers))
        self.saved = None


class _Discard:
    """A text stream that keeps nothing (the standard output of ranks other than 0)."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


class DataParallel:
    """The settings of ``fit(..., distributed=...)`` and the hooks fit calls.

    ``fit(..., distributed=True)`` uses the defaults; pass an instance to choose::

        dp = cconv.distributed.DataParallel(bucket_bytes=4 << 20, overlap=True)
        model.fit(x, y, batch_size=256, distributed=dp)
        dp.stats          # of the last fit: GradientReducer.stats, and sync_s, the seconds
                          # spent waiting for the slowest rank (gathering the logs)

    Parameters
    ----------
    bucket_bytes : int, default DEFAULT_BUCKET_BYTES
    overlap : bool, default False
        See :class:`GradientReducer`.
    comm : mpi4py.MPI.Comm, optional
        Passed to :func:`init` (default ``MPI.COMM_WORLD``).
    """

    def __init__(self, bucket_bytes=DEFAULT_BUCKET_BYTES, overlap=False, comm=None):
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")
        self.bucket_bytes = bucket_bytes
        self.overlap = bool(overlap)
        self.comm = comm
        self.world = None
        self.stats = {}
        self._reducer = None
        self._state = None
        self._n_local = 0

    # -- the hooks of cconv.training.fit -----------------------------------------------
    @property
    def is_root(self):
        return self.world.is_root

    @contextlib.contextmanager
    def guard(self, agreed=()):
        """Around a whole fit: with several ranks, an exception ends the job
        (:meth:`World.abort`) unless it is one of ``agreed`` (raised by every rank alike);
        the standard output of the ranks other than 0 is discarded."""
        self.world = init(self.comm)
        quiet = (contextlib.redirect_stdout(_Discard()) if not self.world.is_root
                 else contextlib.nullcontext())
        try:
            with quiet:
                yield self
        except agreed:
            raise
        except BaseException:
            if self.world.size == 1:
                raise
            self.world.abort(sys.exc_info(), code=130 if isinstance(sys.exc_info()[1], KeyboardInterrupt) else 1)

    def callbacks(self, checkpointing):
        """The callbacks fit adds after the user's (see :class:`_RankState`)."""
        self._state = _RankState(self.world, checkpointing)
        return [self._state]

    def start(self, model, settings, start_epoch, resumed, history, callbacks):
        """After rank 0 read a checkpoint (``resumed``): check that every rank got the same
        data shapes and settings, broadcast rank 0's model, optimizer, generators, position,
        history and callback states, and give each rank its own dropout generators.
        Returns the epoch to start from."""
        world = self.world
        comm = world.comm
        mine = dict(settings, architecture=_architecture_key(model))
        every = comm.allgather(mine)
        for r, theirs in enumerate(every):
            if theirs != every[0]:
                diffs = [f"{k}: rank 0 {every[0].get(k)!r}, rank {r} {theirs.get(k)!r}"
                         for k in sorted(set(theirs) | set(every[0])) if theirs.get(k) != every[0].get(k)]
                raise ValueError("fit(distributed=True) needs the same model, data and settings on "
                                 f"every rank; {'; '.join(diffs)}")
        broadcast_model(model, comm)
        position = comm.bcast((start_epoch, bool(model.stop_training), resumed) if world.is_root else None)
        start_epoch, stop, resumed = position
        model.stop_training = stop
        if resumed:
            extra = comm.bcast((history.history, history.epoch, [cb.state_dict() for cb in callbacks])
                               if world.is_root else None)
            if not world.is_root:
                history.history = {k: list(v) for k, v in extra[0].items()}
                history.epoch = list(extra[1])
                for cb, state in zip(callbacks, extra[2]):
                    cb.load_state_dict(state)
        self._state.assign_generators(model)
        # One rank has nothing to reduce: its gradients and logs are the global batch's.
        self._reducer = GradientReducer(model, world, self.bucket_bytes, self.overlap) if world.size > 1 else None
        self.stats = dict(self._reducer.stats if self._reducer else {}, ranks=world.size, sync_s=0.0,
                          threads=_config.get_num_threads(), bucket_bytes=self.bucket_bytes,
                          overlap=self.overlap)
        return start_epoch

    def shard(self, m):
        """This rank's part ``(lo, hi)`` of a global batch of ``m`` samples."""
        return shard(m, self.world.rank, self.world.size)

    def begin_step(self, n_local):
        """Before this rank's forward pass on its ``n_local`` samples of a global batch."""
        self._n_local = n_local
        if self._reducer is not None:
            self._reducer.begin(n_local)

    @property
    def grads_ready(self):
        """The backward pass's per-layer hook (None when there is nothing to overlap)."""
        return None if self._reducer is None else self._reducer.grads_ready

    def end_step(self, logs, finite, n_local):
        """After this rank's backward pass on its ``n_local`` samples: the global batch's
        gradients in the layers' grads, and its logs, finiteness and number of samples
        (the same on every rank)."""
        red = self._reducer
        if red is None:
            return logs, finite, n_local
        red.flush()
        # The logs go first: waiting for the slowest rank happens here (sync_s), so that
        # reduce_s is the transport that the backward pass did not hide.
        t = time.perf_counter()
        parts = self.world.comm.allgather((self._n_local, logs, bool(finite)))
        self.stats["sync_s"] += time.perf_counter() - t
        total = sum(n for n, _, _ in parts)
        red.reduce(total)
        self.stats.update(red.stats)
        return _weighted_means([(n, l) for n, l, _ in parts]), all(f for _, _, f in parts), total

    def metric_values(self, plan):
        """The values of ``plan``'s metrics over the samples every rank gave them since
        their reset (their states gathered and merged in rank order)."""
        if self.world.size == 1 or not any(plan.metric_objects):     # (no metrics: no message)
            return plan.metric_values()
        return plan.metric_values(self.world.comm.allgather(plan.metric_objects))

    def end_epoch(self, model):
        """Before validation: every non-trainable state array (batch-norm statistics)
        becomes its mean over the ranks; then the ranks check that they hold the same
        weights."""
        world = self.world
        if world.size == 1:
            return
        MPI = _mpi()
        states = [a for layer in model.layers for role, _, a in layer.weights()
                  if role == "state" and a.dtype.kind == "f"]
        for a in states:
            world.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
            a /= a.dtype.type(world.size)
        sums = world.comm.allgather(_checksum(model))
        if len(set(sums)) > 1:
            differ = [r for r, s in enumerate(sums) if s != sums[0]]
            raise RuntimeError(f"the ranks hold different weights after this epoch (ranks {differ} differ "
                               f"from rank 0); the ranks ran different code or data, or this is a bug")

    def reduce_means(self, logs, n_local):
        """Validation results of this rank's part, as means over all ranks."""
        if self.world.size == 1:
            return logs
        return reduce_means(logs, n_local, self.world.comm)

    def __repr__(self):
        return f"DataParallel(bucket_bytes={self.bucket_bytes}, overlap={self.overlap})"


def _architecture_key(model):
    """A short fingerprint of the architecture (not the seed) and the weight shapes."""
    text = json.dumps(saving.architecture(model.get_config()), sort_keys=True, default=str)
    shapes = [tuple(a.shape) for layer in model.layers for _, _, a in layer.weights()]
    return zlib.crc32((text + repr(shapes)).encode())
