"""Thread budget, BLAS thread control and build information.

One function decides how many threads cconv uses (:func:`get_num_threads`). The compiled
kernels run ``nt`` OpenMP threads, each calling BLAS single-threaded, so while a kernel
runs the BLAS libraries are limited to ``budget // nt`` threads (1 when the kernel runs
on the whole budget): OpenMP threads and BLAS threads together never exceed the budget.
"""
from __future__ import annotations

import os
import platform
import sys
import threading
import warnings
from contextlib import contextmanager
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Literal, TextIO

_num_threads: int | None = None  # set by set_num_threads; None = decided by the environment
_default_threads: int | None = None  # set_default_num_threads: this process's share of the CPUs
_blas_controllers = None          # threadpoolctl LibControllers of the BLAS libraries


#: How long an idle OpenMP thread spins before it sleeps, unless the user set
#: OMP_WAIT_POLICY or these variables: GNU libgomp counts spins (10,000 is about 0.2 ms
#: on the 2.8 GHz Xeon we measured; its default, 300,000, about 4.4 ms), LLVM/Intel
#: OpenMP takes milliseconds. A thread that still spins when the next kernel starts joins
#: it at once, while a sleeping one must be woken: about 0.1 ms per parallel region on
#: our virtual machine, several times the cost of a small kernel. Spinning much longer
#: would take a core from other work between training steps.
#:
#: Whose threads the setting reaches is decided by the runtime files the process maps, not
#: by the environment: the runtime reads it once, as it initialises. The wheel vendors a
#: renamed libgomp, so cconv's runtime and its setting are its own. A source install links
#: libgomp.so.1, which every library linking the same soname shares (PyTorch's CPU wheel
#: ships one): imported after cconv, such a library's threads spin as briefly as cconv's;
#: imported before, it has initialised the runtime and cconv's setting is not applied
#: (tests/test_threads_memory.py measures both orders).
OMP_SPIN_ENV = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}


def _core():
    name = f"{__package__}._core"
    if name in sys.modules:
        return sys.modules[name]
    env = {}
    if "OMP_WAIT_POLICY" not in os.environ:
        env = {k: v for k, v in OMP_SPIN_ENV.items() if k not in os.environ}
    # The OpenMP runtime reads them when it initialises (libgomp as the extension loads
    # it, LLVM's at its first call: omp_max_threads below); they are removed again right
    # after, so that child processes and runtimes that other libraries load later from
    # other files do not see them (a runtime that is already loaded, or that another
    # library shares by soname, is another matter: see OMP_SPIN_ENV).
    os.environ.update(env)
    try:
        # import_module, not `from . import _core`: when the file is missing, the latter
        # reports "cannot import name ... (most likely due to a circular import)".
        core = import_module(name)
        core.omp_max_threads()
    except ImportError as exc:  # a broken or partial install
        raise ImportError(
            "cconv's compiled extension (cconv._core) could not be imported: "
            f"{exc}. The installation is incomplete or was built for another Python/platform. "
            "Reinstall with `pip install --force-reinstall cconv`, or, from a source checkout, "
            "build it with `pip install .` (needs a C compiler and Cython)."
        ) from exc
    finally:
        for k in env:
            os.environ.pop(k, None)
    return core


def _cpu_quota() -> int | None:
    """CPUs allowed by a cgroup v2/v1 CPU quota, if any."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, quota // period)
    except (OSError, ValueError):
        pass
    return None


def _available_cpus() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = _cpu_quota()
    return max(1, min(n, quota) if quota else n)


def _parse_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__")
    ):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


#: Default bound, in bytes, on the freed output buffers kept for reuse.
CACHE_LIMIT_DEFAULT = 512 << 20
_cache_limit: int | None = None


def set_cache_limit(nbytes: int | None) -> None:
    """Bound the memory that cconv keeps for reuse between calls.

    Kernel outputs of 1 MiB or more (convolution and pool results, gradients, scratch) come
    from a cache. When the last array using such a buffer goes away, the buffer is kept,
    while the cache holds less than ``nbytes``, and handed to the next output of the same
    size. A training loop allocates the same sizes at every step, and a fresh buffer costs
    the operating system a page fault and a zero-fill of every page: for a max-pool's
    gradient that takes as long as the pool itself.

    Parameters
    ----------
    nbytes : int or None
        The bound; 0 turns the cache off (and frees what it holds). None restores the
        default: the environment variable ``CCONV_CACHE_BYTES`` if set, else 512 MiB.
    """
    global _cache_limit
    if nbytes is None:
        env = _env_int("CCONV_CACHE_BYTES", 0)
        nbytes = CACHE_LIMIT_DEFAULT if env is None else env
    elif isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int or None, got {nbytes!r}")
    _cache_limit = min(int(nbytes), sys.maxsize)   # more than the address space: no bound
    _core().set_cache_limit(_cache_limit)


def get_cache_limit() -> int:
    """The bound set by :func:`set_cache_limit`, in bytes."""
    if _cache_limit is None:
        set_cache_limit(None)
    assert _cache_limit is not None
    return _cache_limit


def empty_cache() -> None:
    """Free the buffers that the cache holds now (the bound stays as it is)."""
    limit = get_cache_limit()
    _core().set_cache_limit(0)
    _core().set_cache_limit(limit)


_env_warned: set = set()


def _warn_once(key, message):
    """Warn once per ``key``, pointing at the code that called into _config."""
    if key not in _env_warned:
        _env_warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _env_int(name, minimum):
    """The environment variable ``name`` as an int >= minimum (0 or 1), or None.

    None when it is unset or invalid: an invalid value gets one warning and the default,
    as the OpenMP runtimes treat ``OMP_NUM_THREADS=garbage``.
    """
    env = os.environ.get(name, "").split(",")[0].strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        _warn_once((name, env), f"cconv: ignoring {name}={env!r} (not {kind} integer); "
                                "using the default")
        return None
    return value


#: Most threads cconv runs per available CPU: more only adds switching and memory (each
#: OpenMP thread has its own stack and workspace), and thousands of them exhaust the
#: address space, where GNU OpenMP ends the process instead of raising an error.
MAX_THREADS_PER_CPU = 4


def _max_threads() -> int:
    return MAX_THREADS_PER_CPU * _cpus()


def _capped(n, what):
    """``n`` threads, at most ``_max_threads()``; ``what`` says where n came from."""
    cap = _max_threads()
    if n > cap:
        _warn_once((what, n), f"cconv: {what} asks for {n} threads, more than "
                              f"{MAX_THREADS_PER_CPU} per available CPU; using {cap}")
        return cap
    return n


def set_num_threads(n: int | None) -> None:
    """Set the number of threads cconv's kernels use.

    Parameters
    ----------
    n : int or None
        A positive number of threads, or None to go back to the default
        (``OMP_NUM_THREADS``, then the OpenMP runtime's maximum, which threadpoolctl
        can limit, capped by the CPUs this process may use). More than
        ``MAX_THREADS_PER_CPU`` per available CPU is capped with a warning.

    Notes
    -----
    A process forked (``os.fork``, ``multiprocessing``'s default start method on Linux)
    after its parent ran parallel kernels runs its kernels on one thread: the parent's
    OpenMP threads do not exist in the child, and GNU OpenMP would wait for them forever.
    Use the "spawn" or "forkserver" start method for children that need several threads.
    """
    global _num_threads
    if n is None:
        _num_threads = None
        return
    n = _capped(_parse_positive(n, "n"), "set_num_threads()")
    if _forked_child and n > 1:
        warnings.warn("cconv: this process was forked after its parent ran parallel kernels; "
                      "its kernels run on one thread (start children with the 'spawn' or "
                      "'forkserver' method to use more)", RuntimeWarning, stacklevel=2)
    _num_threads = n


def set_default_num_threads(n: int | None) -> None:
    """Set the thread count used when neither :func:`set_num_threads` nor
    ``OMP_NUM_THREADS`` chose one (None: the CPUs this process may use).

    :mod:`cconv.distributed` sets it to this process's share of its node's cores, so that
    several processes on one node do not oversubscribe it.
    """
    global _default_threads
    _default_threads = None if n is None else _parse_positive(n, "n")


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, bounded by a cgroup CPU quota."""
    return _cpus()


def get_num_threads() -> int:
    """The number of threads cconv's kernels use (see :func:`set_num_threads`)."""
    global _parallel_used
    if _forked_child:
        return 1
    if _num_threads is not None:
        n = _num_threads
    else:
        n = _env_int("OMP_NUM_THREADS", 1)
        if n is None:
            # omp_get_max_threads() honours OMP_NUM_THREADS and threadpoolctl's OpenMP limits.
            n = max(1, min(_core().omp_max_threads(), _cpus(), _default_threads or _cpus()))
        n = _capped(n, "the environment (OMP_NUM_THREADS)")
    limit = getattr(_thread_limit, "n", None)
    if limit is not None and limit < n:
        n = limit
    if n > _threads_started:
        _start_threads(n)
    _parallel_used = _parallel_used or n > 1
    return n


_thread_limit = threading.local()     # .n: a cap for the calling Python thread (thread_limit)


@contextmanager
def thread_limit(n: int):
    """Cap :func:`get_num_threads` at ``n`` for the calling Python thread while inside (the
    model's inference of a small batch runs its kernels on the calling thread: splitting
    work of a few hundred microseconds does not pay, and on a busy machine every fork/join
    waits for a descheduled sibling)."""
    old = getattr(_thread_limit, "n", None)
    _thread_limit.n = n if old is None else min(old, n)
    try:
        yield
    finally:
        _thread_limit.n = old


# ---------------------------------------------------------------------------------------
# Thread creation and fork
# ---------------------------------------------------------------------------------------
_forked_child = False      # forked after the parent may have started OpenMP threads
_parallel_used = False     # a kernel may have run on several OpenMP threads
_threads_started = 1       # most threads this process has shown it can create
_threads_lock = threading.Lock()


def _start_threads(n):
    """Make sure ``n`` threads can exist before a kernel asks the OpenMP runtime for them.

    GNU OpenMP ends the process (``libgomp: Thread creation failed``) when it cannot create
    a thread, e.g. under an address-space limit; no ``except`` can catch that. Creating the
    threads once beforehand, the first time a count is asked for, turns the common cause
    (too little memory for their stacks) into a RuntimeError.
    """
    global _threads_started
    with _threads_lock:
        if n <= _threads_started:
            return
        release = threading.Event()
        threads = []
        try:
            for _ in range(n - 1):
                t = threading.Thread(target=release.wait, daemon=True)
                t.start()
                threads.append(t)
        except RuntimeError as exc:
            raise RuntimeError(
                f"cconv could not start {n} threads (only {len(threads) + 1}: {exc}); "
                "lower cconv.set_num_threads() or OMP_NUM_THREADS, or raise the process's "
                "memory or thread limits") from None
        finally:
            release.set()
            for t in threads:
                t.join()
        _threads_started = n


def _after_fork_in_child():
    """Runs in every child created by fork (``os.register_at_fork``)."""
    global _forked_child, _blas_lock, _blas_users, _blas_saved, _blas_cap, _threads_lock
    # Locks another thread held at the fork stay locked forever in the child.
    _threads_lock = threading.Lock()
    _blas_lock = threading.Lock()
    if _blas_users:   # a parent thread was inside blas_threads: put the limit back
        for (_, put), old in zip(_blas_calls, _blas_saved):
            put(old)
    _blas_users, _blas_saved = 0, []
    _blas_cap = 1 << 30
    _forked_child = _forked_child or _parallel_used


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_cpus_cache: int | None = None


def _cpus() -> int:
    global _cpus_cache
    if _cpus_cache is None:
        _cpus_cache = _available_cpus()
    return _cpus_cache


def _blas_libs():
    global _blas_controllers, _blas_calls
    if _blas_controllers is None:
        _core().load_blas()  # make sure scipy's BLAS is loaded before looking for it
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_controllers = []
        else:
            # Every BLAS in the process: scipy's (the kernels' GEMMs) and numpy's (Dense).
            _blas_controllers = list(
                ThreadpoolController().select(user_api="blas").lib_controllers)
        _blas_calls = [_thread_count_calls(lib) for lib in _blas_controllers]
    return _blas_controllers


_blas_calls: list = []          # (get, set) of each of _blas_libs(), in that order


def _thread_count_calls(lib):
    """``(get(), set(n))`` of a BLAS library's thread count.

    For an OpenBLAS with its own thread pool, its C functions themselves (threadpoolctl
    looks each symbol up again on every call, which made the four limits of a batch-1
    predict cost about 0.1 ms); otherwise threadpoolctl's methods. Setting goes around
    threadpoolctl's rule that only the first Python thread that set an OpenBLAS pool may
    change it again: it silently ignored the others, so a kernel in another thread ran with
    BLAS unlimited and a restore made there was lost (BLAS stayed at one thread in 4 of 5
    runs of two threads). cconv serialises its own changes under ``_blas_lock``.
    """
    setter = getattr(lib, "_real_set_num_threads", lib.set_num_threads)
    symbol = getattr(lib, "_get_symbol", None)
    if getattr(lib, "internal_api", None) == "openblas" and symbol is not None and \
            getattr(lib, "threading_layer", None) != "openmp":
        try:
            get, put = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
        except Exception:       # another threadpoolctl: its public methods
            get = put = None
        if get is not None and put is not None:
            return get, put
    return lib.get_num_threads, setter


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list = []
_blas_cap = 1 << 30             # the smallest limit of the blocks inside blas_threads


class blas_threads:
    """Limit the BLAS libraries to at most ``n`` threads inside the block.

    Safe with several Python threads running kernels at once: the first one in saves the
    library's setting, every one lowers the limit to its own ``n`` if that is smaller
    (so no kernel's GEMMs ever run on more BLAS threads than it allowed), and the last
    one out restores the setting. A block inside one whose limit is already at most ``n``
    changes nothing.

    A model's forward and backward passes and a whole training step run inside one such
    block at one thread, so the kernels' own blocks (one thread each, for a kernel on the
    whole thread budget) change nothing. Every change of OpenBLAS's thread count wakes its
    idle worker threads, which then spin for a while against cconv's OpenMP threads (about
    0.1 ms of their CPU per change here). With numpy's and scipy's OpenBLAS at 2 threads, a
    training step of the paper network at 2 threads changed them 52 times and a batch-256
    predict 20 times; now 4 times each (the wall-time effect was within this machine's
    noise: 0.96x in one in-process A/B of 12 rounds, 1.00x and 1.03x in two later ones). A
    kernel that runs on fewer threads than the budget then also runs its GEMMs on one BLAS
    thread.

    A class rather than a generator: a batch-1 predict enters one, and the generator's
    machinery cost about as much as the block's own work.
    """

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        self._n = n

    def __enter__(self) -> None:
        global _blas_users, _blas_saved, _blas_cap
        n = self._n
        _blas_libs()
        with _blas_lock:
            if _blas_users == 0:
                _blas_saved = [get() for get, _ in _blas_calls]
                _blas_cap = 1 << 30
            _blas_users += 1
            if n < _blas_cap:
                for get, put in _blas_calls:
                    if get() > n:
                        put(n)
                _blas_cap = n

    def __exit__(self, *exc: object) -> None:
        global _blas_users, _blas_saved, _blas_cap
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for (get, put), old in zip(_blas_calls, _blas_saved):
                    if get() != old:
                        put(old)
                _blas_saved = []
                _blas_cap = 1 << 30


def show_config(file: TextIO | Literal[False] | None = None) -> dict[str, Any]:
    """Print (and return) how cconv was built and what it runs on.

    Version, compiler, OpenMP on/off and its runtime, flush-to-zero, the BLAS in use
    and its thread count, cconv's thread count.
    """
    from ._version import __version__

    core = _core()
    info: dict = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "compiler": platform.python_compiler(),
        "openmp": core.openmp_enabled(),
        "openmp_runtime": None,
        "flush_to_zero": core.ftz_available(),
        "num_threads": get_num_threads(),
        "blas": [],
    }
    try:
        from threadpoolctl import threadpool_info

        _blas_libs()
        for lib in threadpool_info():
            entry = {k: lib.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
            if lib.get("user_api") == "blas":
                info["blas"].append(entry)
            elif lib.get("user_api") == "openmp" and info["openmp"]:
                info["openmp_runtime"] = entry
    except ImportError:
        pass
    if file is not False:
        out = file or sys.stdout
        print(f"cconv {info['version']} (Python {info['python']}, {info['platform']})", file=out)
        print(f"  compiler:      {info['compiler']}", file=out)
        omp = "on" if info["openmp"] else "off (the kernels run serially)"
        print(f"  OpenMP:        {omp}", file=out)
        if info["openmp_runtime"]:
            rt = info["openmp_runtime"]
            print(f"  OpenMP runtime: {rt['internal_api']} {rt['filepath']}", file=out)
        print(f"  flush-to-zero: {'on' if info['flush_to_zero'] else 'unavailable'}", file=out)
        print(f"  threads:       {info['num_threads']}", file=out)
        for lib in info["blas"]:
            print(f"  BLAS:          {lib['internal_api']} {lib['version']} "
                  f"({lib['num_threads']} threads) {lib['filepath']}", file=out)
        if not info["blas"]:
            print("  BLAS:          scipy.linalg.cython_blas (threadpoolctl not installed)", file=out)
    return info
