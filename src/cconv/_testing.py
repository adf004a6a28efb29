"""Test hooks: force cconv's thread count and kernel routes, and see what ran.

For cconv's own tests and benchmarks, not a public API. ``forced`` sets the documented knobs
of :mod:`cconv.functional` (``MIN_WORK_PER_THREAD``, ``WINOGRAD_MIN_CHANNELS``,
``WINOGRAD4_MIN_CHANNELS``, ``DIRECT_MAX_K``, ``DEPTHWISE_MIN_CHANNELS``, ``DEPTHWISE_MIN_OUTPUTS``,
``SLOTS_PER_THREAD``, ``TILE_BYTES``, ``WINOGRAD_BLOCK_BYTES``), the instruction-set cap of the vectorised kernels
(``_core.simd_level``) and the thread count, and puts them back afterwards.
``kernels_run`` reads the compiled core's record (``_probe.h``) of which kernel paths ran
and how many threads each one used::

    with forced(threads=2, conv="winograd"):
        y = F.conv2d(x, w, padding=1)
    kernels_run()   # {"winograd_filter": Run(team=2, workers=1), "winograd_forward": ...}

``team`` is the size of the OpenMP team the runtime gave the kernel, ``workers`` how many of
its threads took at least one work item: a kernel that hands work out dynamically may leave
a thread idle when another one was faster.

Not thread-safe: the knobs are module globals, and the record is shared by every Python
thread. The record is reset when a ``forced`` block starts.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from . import _config
from . import functional as F

_core = _config._core()

#: Convolution routes: "auto" leaves the choice to cconv; the others are taken wherever
#: their conditions on the call allow (Winograd: 3x3, stride 1, undilated, ungrouped, F(2x2, 3x3)
#: both ways; "winograd4": the same convolutions, forward on F(2x2, 3x3) and backward on
#: F(4x4, 3x3) whatever the output size; direct: float32, groups 1, a small KH*KW*C_in
#: (``DIRECT_MAX_K``), an AVX-512, AVX2 + FMA or NEON CPU, and for the backward pass
#: need_dx=False; depthwise: groups == C_in > 1, any channel multiplier), the im2col route
#: everywhere else. The depthwise route is numpy code in cconv.functional, not a compiled
#: kernel: kernels_run() records nothing for it.
CONV_ROUTES = ("auto", "im2col", "winograd", "winograd4", "direct", "depthwise")
#: Max-pool kernels for windows that tile the input (float32, int32 argmax, channels a
#: multiple of 8 or 16): "generic" caps the instruction set at 0 (which also switches the
#: direct convolution off), "avx2" at AVX2 (likewise), "avx512" at AVX-512.
POOL_ROUTES = ("auto", "generic", "avx2", "avx512")
_POOL_LEVEL = {"generic": 0, "avx2": 1, "avx512": 2}

#: The kernel paths of each route, as kernels_run() names them.
ROUTE_KERNELS = {
    "im2col": ("conv2d_forward", "conv2d_backward", "conv2d_backward_weights"),
    "winograd": ("winograd_forward", "winograd_backward"),
    "winograd4": ("winograd_forward", "winograd4_backward"),
    "direct": ("direct_forward", "direct_backward_weights"),
    "generic": ("max_pool2d_forward", "max_pool2d_backward_tiled"),
    "avx2": ("max_pool2d_forward_avx2", "max_pool2d_backward_tiled_avx2"),
    "avx512": ("max_pool2d_forward_avx512", "max_pool2d_backward_tiled_avx512"),
}

#: The kernel paths of a convolution fused with the 2x2 stride-2 max pool after it
#: (conv2d_max_pool2d, conv2d_max_pool2d_backward) on the routes that have them.
ROUTE_POOL_KERNELS = {
    "winograd": ("winograd_forward_pool", "winograd_backward_pool"),
    "direct": ("direct_forward_pool", "direct_backward_weights_pool"),
}


class RouteUnavailable(RuntimeError):
    """The route needs an instruction set that this CPU (or build) lacks."""


class Run(NamedTuple):
    team: int       # omp_get_num_threads() in the kernel's parallel region
    workers: int    # threads of that team that ran at least one work item


def simd_max() -> int:
    """The highest instruction-set level of this CPU and build (2 AVX-512, 1 AVX2, 0)."""
    old = _core.simd_level()
    top = _core.simd_level(2)
    _core.simd_level(old)
    return top


def reset() -> None:
    """Forget the kernels that have run."""
    _core.probe_reset()


def kernels_run() -> dict[str, Run]:
    """The kernel paths that ran since the last reset, with the threads they used."""
    return {name: Run(*v) for name, v in _core.probe_record().items()}


@contextmanager
def forced(threads: int | None = None, conv: str = "auto", pool: str = "auto",
           min_work: int | None = None, slots_per_thread: int | None = None,
           block_bytes: int | None = None) -> Iterator[None]:
    """Run the block with a fixed thread count and kernel routes.

    Parameters
    ----------
    threads : int or None
        cconv's thread count inside the block. Unless ``min_work`` says otherwise, the
        per-thread work floor drops to 1 element, so that every kernel splits its work over
        as many threads as it has work items (tests of the threaded paths need no huge inputs).
    conv : one of CONV_ROUTES
    pool : one of POOL_ROUTES
    min_work : int or None
        ``functional.MIN_WORK_PER_THREAD`` inside the block.
    slots_per_thread : int or None
        ``functional.SLOTS_PER_THREAD`` inside the block.
    block_bytes : int or None
        ``functional.TILE_BYTES`` and ``WINOGRAD_BLOCK_BYTES`` inside the block: 1 gives the
        smallest im2col tiles (one output row), Winograd blocks (8 tiles) and depthwise blocks
        (one image), so that small inputs take the paths of many tiles and blocks per thread
        (accumulation across them, partial last ones).

    Raises RouteUnavailable (before changing anything) when the CPU lacks the route's
    instruction set, ValueError for an unknown route or a contradictory pair (the direct
    convolution needs AVX2 at least, so it cannot run with pool="generic"). Inside the block
    Winograd convolutions transform their filter on every call
    (``functional.FILTER_CACHE_MAX_TILES`` is 0), so that the route's every kernel runs.
    """
    if conv not in CONV_ROUTES:
        raise ValueError(f"conv must be one of {CONV_ROUTES}, got {conv!r}")
    if pool not in POOL_ROUTES:
        raise ValueError(f"pool must be one of {POOL_ROUTES}, got {pool!r}")
    if conv == "direct" and pool == "generic":
        raise ValueError(f"conv='direct' needs AVX2 at least, which pool={pool!r} switches off")
    need = max(1 if conv == "direct" else 0, _POOL_LEVEL.get(pool, 0))
    if simd_max() < need:
        raise RouteUnavailable(f"conv={conv!r}, pool={pool!r} need instruction-set level "
                               f"{need}; this CPU and build have {simd_max()}")
    if min_work is None and threads is not None:
        min_work = 1
    knobs = {"FILTER_CACHE_MAX_TILES": 0}
    if min_work is not None:
        knobs["MIN_WORK_PER_THREAD"] = min_work
    if slots_per_thread is not None:
        knobs["SLOTS_PER_THREAD"] = slots_per_thread
    if block_bytes is not None:
        knobs["TILE_BYTES"] = knobs["WINOGRAD_BLOCK_BYTES"] = block_bytes
    if conv != "auto":
        knobs["WINOGRAD_MIN_CHANNELS"] = 1 if conv in ("winograd", "winograd4") else None
        knobs["WINOGRAD4_MIN_CHANNELS"] = 0 if conv == "winograd4" else None
        knobs["DIRECT_MAX_K"] = 2**31 - 1 if conv == "direct" else None
        knobs["DEPTHWISE_MIN_CHANNELS"] = 1 if conv == "depthwise" else None
        knobs["DEPTHWISE_MIN_OUTPUTS"] = 0
    saved = {k: getattr(F, k) for k in knobs}
    saved_threads = _config.get_num_threads()
    saved_level = _core.simd_level()
    try:
        for k, v in knobs.items():
            setattr(F, k, v)
        if threads is not None:
            _config.set_num_threads(threads)
        if pool != "auto":
            _core.simd_level(_POOL_LEVEL[pool])
        reset()
        yield
    finally:
        for k, v in saved.items():
            setattr(F, k, v)
        _config.set_num_threads(saved_threads)
        _core.simd_level(saved_level)
