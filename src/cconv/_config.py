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
from contextlib import contextmanager
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Literal, TextIO

_num_threads: int | None = None  # set by set_num_threads; None = decided by the environment
_blas_controllers = None          # threadpoolctl LibControllers of the BLAS libraries


#: How long an idle OpenMP thread spins before it sleeps, unless the user set
#: OMP_WAIT_POLICY or these variables: GNU libgomp counts spins (10,000 is about 0.2 ms
#: on the 2.8 GHz Xeon we measured; its default, 300,000, about 4.4 ms), LLVM/Intel
#: OpenMP takes milliseconds. A thread that still spins when the next kernel starts joins
#: it at once, while a sleeping one must be woken: about 0.1 ms per parallel region on
#: our virtual machine, several times the cost of a small kernel. Spinning much longer
#: would take a core from other work between training steps.
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
    # after, so that they reach neither other libraries' runtimes loaded later (e.g.
    # PyTorch's) nor child processes.
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
    _cache_limit = int(nbytes)
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


def _env_int(name, minimum):
    """The environment variable ``name`` as an int >= minimum (0 or 1), or None if unset."""
    env = os.environ.get(name, "").split(",")[0].strip()
    if not env:
        return None
    kind = "a positive" if minimum == 1 else "a non-negative"
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"{name} must be {kind} int, got {env!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be {kind} int, got {env!r}")
    return value


def set_num_threads(n: int | None) -> None:
    """Set the number of threads cconv's kernels use.

    Parameters
    ----------
    n : int or None
        A positive number of threads, or None to go back to the default
        (``OMP_NUM_THREADS``, then the OpenMP runtime's maximum, which threadpoolctl
        can limit, capped by the CPUs this process may use).
    """
    global _num_threads
    _num_threads = None if n is None else _parse_positive(n, "n")


def get_num_threads() -> int:
    """The number of threads cconv's kernels use (see :func:`set_num_threads`)."""
    if _num_threads is not None:
        return _num_threads
    env = _env_int("OMP_NUM_THREADS", 1)
    if env is not None:
        return env
    # omp_get_max_threads() honours OMP_NUM_THREADS and threadpoolctl's OpenMP limits.
    return max(1, min(_core().omp_max_threads(), _cpus()))


_cpus_cache: int | None = None


def _cpus() -> int:
    global _cpus_cache
    if _cpus_cache is None:
        _cpus_cache = _available_cpus()
    return _cpus_cache


def _blas_libs():
    global _blas_controllers
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
    return _blas_controllers


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list = []


@contextmanager
def blas_threads(n: int):
    """Limit the BLAS libraries to at most ``n`` threads inside the block.

    Safe with several Python threads running kernels at once: the first one in saves the
    library's setting, every one lowers the limit to its own ``n`` if that is smaller
    (so no kernel's GEMMs ever run on more BLAS threads than it allowed), and the last
    one out restores the setting.
    """
    global _blas_users, _blas_saved
    libs = _blas_libs()
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = [(lib, lib.get_num_threads()) for lib in libs]
        _blas_users += 1
        for lib in libs:
            if lib.get_num_threads() > n:
                lib.set_num_threads(n)
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, old in _blas_saved:
                    if lib.get_num_threads() != old:
                        lib.set_num_threads(old)
                _blas_saved = []


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
