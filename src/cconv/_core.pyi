"""Type stub of the compiled kernels (``src/cconv/_core.pyx``).

These are private: call :mod:`cconv.functional`. The kernels check their geometry and
buffers and raise ``ValueError`` naming themselves, but take only C-contiguous arrays of
the right dtypes: the floating-point arrays of one call share one dtype (the Cython fused
type ``floating``). Arguments marked OUT are written in place. ``tests/test_packaging.py`` checks that the names and parameters
here match the compiled module.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def load_blas() -> None: ...
def plain_args(args: tuple[object, ...]) -> bool: ...
def max_pool2d_fast(
    x: object,
    args: tuple[object, ...],
    out: object,
    memo: dict[object, object],
    make: object,
    min_work: int,
    cache_min: int,
    stream_min: int,
) -> tuple[NDArray[_F], NDArray[np.int32] | NDArray[np.int64]] | None: ...
def conv2d_fast(
    x: object,
    w: object,
    b: object,
    args: tuple[object, ...],
    out: object,
    workspace: object,
    workspace_type: type,
    memo: dict[object, object],
    make: object,
    tuning: tuple[int, int, int, int, int, int, int],
    cache_min: int,
) -> NDArray[_F] | None: ...
def out_problem(
    out: object, shape: tuple[int, ...], dtype: np.dtype, inputs: tuple[np.ndarray | None, ...]
) -> int: ...

C_API_VERSION: tuple[int, int]
def same_bytes(a: NDArray[np.generic], b: NDArray[np.generic], num_threads: int = ...) -> bool: ...
def adam_update(
    params: list[NDArray[_F]],
    grads: list[NDArray[_F]],
    ms: list[NDArray[_F]],
    vs: list[NDArray[_F]],
    decay_mode: int,
    decay: float,
    wd: float,
    b1: float,
    b2: float,
    sbc2: float,
    eps: float,
    step: float,
    num_threads: int,
) -> None: ...  # params, ms, vs: IN/OUT
def matmul(
    trans_a: bool,
    trans_b: bool,
    a: NDArray[_F],
    b: NDArray[_F],
    beta: float,
    c: NDArray[_F],  # IN/OUT
    num_threads: int,
) -> None: ...
class Block:
    """Aligned, writable memory from cconv's buffer cache (a numpy array's base)."""
    def __init__(self, nbytes: int) -> None: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

def set_cache_limit(limit: int) -> None: ...
def cache_info() -> tuple[int, int]: ...
def cache_stats() -> tuple[int, int]: ...
def openmp_enabled() -> bool: ...
def omp_max_threads() -> int: ...
def ftz_available() -> bool: ...
def probe_reset() -> None: ...
def probe_record() -> dict[str, tuple[int, int]]: ...
def im2col(
    x: NDArray[_F],
    cols: NDArray[_F],  # OUT
    KH: int,
    KW: int,
    OH: int,
    OW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    num_threads: int,
) -> None: ...
def col2im(
    cols: NDArray[_F],
    x: NDArray[_F],  # IN/OUT
    KH: int,
    KW: int,
    OH: int,
    OW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    num_threads: int,
    zero: bool = ...,
) -> None: ...
def conv2d_forward(
    x: NDArray[_F],
    w: NDArray[_F],
    bias: NDArray[_F] | None,
    y: NDArray[_F],  # OUT
    work: NDArray[_F] | None,  # scratch
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    groups: int,
    tile_rows: int,
    num_threads: int,
) -> None: ...
def conv_plan(
    shape: tuple[int, int, int, int],
    KH: int,
    KW: int,
    Cout: int,
    sh: int,
    sw: int,
    pt: int,
    pb: int,
    pl: int,
    pr: int,
    dh: int,
    dw: int,
    groups: int,
    itemsize: int,
    backward: bool,
    need_dx: bool,
    budget: int,
    tuning: tuple[int, int, int, int, int, int, int],
) -> tuple[int, int, int, int, int, int, int, int]: ...
def conv2d_backward(
    dy: NDArray[_F],
    x: NDArray[_F],
    w: NDArray[_F],
    dx: NDArray[_F] | None,  # OUT
    dw_work: NDArray[_F],  # OUT
    db_work: NDArray[_F],  # OUT
    work: NDArray[_F],  # scratch
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    groups: int,
    tile_rows: int,
    num_threads: int,
) -> None: ...
def winograd_filter(w: NDArray[_F], U: NDArray[_F], num_threads: int) -> None: ...  # U: OUT
def winograd_filter_grad(
    dU_work: NDArray[_F], dw: NDArray[_F], num_threads: int  # dw: OUT
) -> None: ...
def winograd_forward(
    x: NDArray[_F],
    U: NDArray[_F],
    bias: NDArray[_F] | None,
    y: NDArray[_F],  # OUT
    work: NDArray[_F],  # scratch
    pt: int,
    pl: int,
    TB: int,
    num_threads: int,
) -> None: ...
def winograd_forward_pool(
    x: NDArray[_F],
    U: NDArray[_F],
    bias: NDArray[_F] | None,
    y: NDArray[_F],  # OUT (N, OH // 2, OW // 2, Cout)
    argmax: NDArray[np.int32] | None,  # OUT, y's shape
    work: NDArray[_F],  # scratch
    OH: int,
    OW: int,
    pt: int,
    pl: int,
    TB: int,
    relu: bool,
    num_threads: int,
) -> None: ...
def winograd_backward(
    dy: NDArray[_F],
    x: NDArray[_F],
    U: NDArray[_F],
    dx: NDArray[_F],  # OUT
    dU_work: NDArray[_F],  # OUT
    db_work: NDArray[_F],  # OUT
    work: NDArray[_F],  # scratch
    pt: int,
    pl: int,
    TB: int,
    need_dx: bool,
    num_threads: int,
) -> None: ...
def winograd_backward_pool(
    dp: NDArray[_F],  # (N, OH // 2, OW // 2, Cout)
    argmax: NDArray[np.int32],  # dp's shape
    mask: NDArray[_F] | None,  # dp's shape: the pooled output after a ReLU
    x: NDArray[_F],
    U: NDArray[_F],
    dx: NDArray[_F],  # OUT
    dU_work: NDArray[_F],  # OUT
    db_work: NDArray[_F],  # OUT
    work: NDArray[_F],  # scratch
    OH: int,
    OW: int,
    pt: int,
    pl: int,
    TB: int,
    need_dx: bool,
    num_threads: int,
) -> int: ...
def max_pool2d_forward(
    x: NDArray[_F],
    y: NDArray[_F],  # OUT
    argmax: NDArray[np.int32] | NDArray[np.int64],  # OUT
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    num_threads: int,
    stream: bool = ...,
) -> None: ...
def max_pool2d_backward_tiled(
    dy: NDArray[_F],
    argmax: NDArray[np.int32] | NDArray[np.int64],
    dx: NDArray[_F],  # OUT
    KH: int,
    KW: int,
    num_threads: int,
    stream: bool = ...,
) -> bool: ...
def simd_level(cap: int = ...) -> int: ...
def multiversion_targets() -> str: ...
def direct_forward(
    x: NDArray[np.float32],
    w: NDArray[np.float32],
    bias: NDArray[np.float32] | None,
    y: NDArray[np.float32],  # OUT
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    num_threads: int,
) -> None: ...
def direct_forward_pool(
    x: NDArray[np.float32],
    w: NDArray[np.float32],
    bias: NDArray[np.float32] | None,
    y: NDArray[np.float32],  # OUT (N, OH // 2, OW // 2, Cout)
    argmax: NDArray[np.int32] | None,  # OUT, y's shape
    OH: int,
    OW: int,
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    relu: bool,
    num_threads: int,
) -> None: ...
def direct_backward_weights(
    dy: NDArray[np.float32],
    x: NDArray[np.float32],
    dw_work: NDArray[np.float32],  # OUT
    db_work: NDArray[np.float32],  # OUT
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    num_threads: int,
) -> None: ...
def direct_backward_weights_pool(
    dp: NDArray[np.float32],  # (N, OH // 2, OW // 2, Cout)
    argmax: NDArray[np.int32],  # dp's shape
    mask: NDArray[np.float32] | None,  # dp's shape: the pooled output after a ReLU
    x: NDArray[np.float32],
    dw_work: NDArray[np.float32],  # OUT
    db_work: NDArray[np.float32],  # OUT
    OH: int,
    OW: int,
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    dh: int,
    dw: int,
    num_threads: int,
) -> int: ...
def max_pool2d_backward(
    dy: NDArray[_F],
    argmax: NDArray[np.int32] | NDArray[np.int64],
    dx: NDArray[_F],  # OUT
    stream: bool,
    num_threads: int,
) -> None: ...
def avg_pool2d_forward(
    x: NDArray[_F],
    y: NDArray[_F],  # OUT
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    num_threads: int,
) -> None: ...
def avg_pool2d_backward(
    dy: NDArray[_F],
    dx: NDArray[_F],  # OUT
    KH: int,
    KW: int,
    sh: int,
    sw: int,
    pt: int,
    pl: int,
    num_threads: int,
) -> None: ...
def relu_forward(x: NDArray[_F], out: NDArray[_F], num_threads: int) -> None: ...  # out: OUT
def relu_backward(
    dy: NDArray[_F],
    y: NDArray[_F],
    out: NDArray[_F],  # OUT
    num_threads: int,
) -> None: ...
