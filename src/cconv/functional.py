"""The functional API of cconv: convolution, pooling, im2col/col2im.

These names and signatures are a stable contract that other packages call.

Conventions
-----------
* Activations are NHWC ``(N, H, W, C)``; convolution weights are HWIO
  ``(KH, KW, C_in // groups, C_out)``; biases ``(C_out,)``.
* dtypes float32 and float64; every output has the input's dtype. Arrays of different
  float dtypes, integer or complex arrays raise ``TypeError``.
* ``stride`` and ``dilation``: an int or a pair ``(sh, sw)``. ``padding``: an int, a pair
  ``(ph, pw)``, explicit ``((top, bottom), (left, right))``, ``"valid"`` or ``"same"``.
  For stride > 1 ``"same"`` pads like TensorFlow: the output has ``ceil(H / stride)`` rows and
  any odd padding goes to the bottom/right.
* Output size: ``floor((H + pad_top + pad_bottom - dilation * (KH - 1) - 1) / stride) + 1``.
* The "convolution" of a CNN is a cross-correlation: ``y[n, i, j, o] = b[o] + sum_{m, k, c}
  x[n, i*sh + m*dh - pt, j*sw + k*dw - pl, c] * w[m, k, c, o]`` (zeros outside the input).
* The kernels run with flush-to-zero / denormals-are-zero (long training runs otherwise
  slow down many times over as values decay into denormals): a denormal input acts as 0
  in the arithmetic and comparisons, and denormal results are flushed to 0.
* Inputs are never modified. Non-contiguous and read-only arrays are accepted (copied to
  a contiguous buffer when needed) and give the same results as contiguous ones.
* ``out=`` (every op; a tuple for the ops with several results): the arrays to write the
  results into, returned as the results. Each must be a writable, C-contiguous ndarray of
  exactly the result's shape and dtype that shares no memory with the inputs; anything else
  is refused with a ``TypeError`` (type, dtype) or ``ValueError`` naming it before anything
  is written. ``workspace=`` (the convolutions, transposed ones included): a
  :class:`Workspace`, scratch memory reused from call to call. With both, a loop allocates nothing.

How it computes
---------------
The compiled kernels (``cconv._core``) run without the GIL on :func:`cconv.get_num_threads`
OpenMP threads. A convolution is im2col + GEMM through scipy's BLAS, processed in tiles
of output rows: each thread holds one im2col tile of at most ``TILE_BYTES`` bytes (and,
in the backward pass, its own ``KH*KW*C_in/groups x C_out`` weight-gradient accumulator),
so the extra memory of one call is bounded by
``threads * (TILE_BYTES + KH*KW*C_in/groups*C_out*itemsize)`` whatever the batch size.

A 3x3, stride-1, undilated, ungrouped convolution with at least ``WINOGRAD_MIN_CHANNELS``
input channels uses Winograd F(2x2, 3x3) instead (see ``_winograd.h``): 16 GEMMs over the
channels per block of 2x2-output tiles, 2.25x fewer multiplications than im2col + GEMM.
The threads take a block each, except where the tiles are few and the channels many (the
transformed weights larger than a block, as at batch 1): they then share out one block's
16 GEMMs (each output the same sum of the same products).
Its transforms subtract inputs from each other, so an infinite input gives NaN rather than
+-inf in the outputs (and gradients) that see it; finite values and NaN are as elsewhere.
Its extra memory is ``threads * WINOGRAD_BLOCK_BYTES`` (the transformed inputs and
outputs of one block of tiles; more only when one tile alone is larger), plus
``16 * C_in * C_out`` elements for the transformed weights and, in the backward pass,
``threads * 16 * C_in * C_out`` for the per-thread weight-gradient accumulators, whatever
the batch size. As an opt-in (``WINOGRAD4_MIN_CHANNELS``, None by default; the
environment variable ``CCONV_WINOGRAD4=1`` sets it to 16 at import), its backward pass, with
at least ``WINOGRAD4_MIN_CHANNELS`` input channels
and output maps whose 4x4 tiles need fewer multiplications than the 2x2 ones, runs on
Winograd F(4x4, 3x3) instead (``_winograd4.h``): 36 GEMMs per block of 4x4-output tiles,
2.25 multiplications per output instead of 4, blocks of at most half
``WINOGRAD_BLOCK_BYTES``, and 36 rather than 16 in the sizes above.
Its float32 gradients are further from the exact ones (on the paper network's layers
2e-6 to 4e-6 of the largest gradient, against 4e-7 on F(2x2, 3x3) and 5e-7 to 1.6e-6 in
PyTorch),
within the tolerances of the PyTorch parity tests but a loss of accuracy for speed, which is
why it is not the default.

A float32 convolution with few input channels (``KH*KW*C_in <= DIRECT_MAX_K``, the first
layer of a network on RGB or grey images) and groups 1 is computed directly on a CPU with
AVX-512, AVX2 + FMA or NEON (see ``_conv_direct.h``; any C_out, the last partial vector of
outputs through lane masks): each output from the input in place, no im2col buffer and no
GEMM with a tiny inner dimension. Extra memory:
``threads * OW * (K floats + 2 pointers)`` and, for the weight gradient (taken when
``need_dx=False``), ``threads * Kpad * C_out`` floats of accumulators.

:func:`conv2d_max_pool2d` (a convolution, optional ReLU and max pool in one call) writes
only the pooled output when the pool is 2x2 with stride 2 and no padding and the
convolution takes the Winograd route (one 2x2 tile per pool window; the tiles the pool drops
are not computed) or the direct route (two output rows at a time in a per-thread buffer of
``2 * OW * C_out`` floats; without the argmax, where the pooled windows lie inside the image
and C_out is a multiple of 32 on AVX-512, 16 on AVX2 or 8 on NEON, pooled in the
registers, no row stored); otherwise it runs :func:`conv2d` then :func:`max_pool2d`.
Its backward pass, :func:`conv2d_max_pool2d_backward`, reads the pooled gradient and the
pool's argmax in the kernels of the same two routes (the direct weight gradient rebuilds
the convolution's output gradient one row at a time in a per-thread buffer of ``OW * C_out``
floats, the Winograd dy transform reads one pool window per tile), so that gradient is not
built either.

A depthwise convolution (``groups == C_in > 1``, each input channel ``c`` convolved with its own
``m = C_out / C_in`` filters into output channels ``c*m .. c*m + m - 1``) with at least
``DEPTHWISE_MIN_CHANNELS`` channels and ``DEPTHWISE_MIN_OUTPUTS`` outputs takes the
depthwise route, numpy code rather than a
compiled kernel: the im2col route would make one GEMM per group with a single output
column, so that per-call overhead dominates. The forward pass adds, for each of the KH*KW
kernel taps, the shifted (strided, dilated) input view times that tap's per-channel weights
into the output window the tap reaches; ``dx`` is its adjoint (the taps' ``dy * w``, summed
over the multiplier, added into the shifted windows of a zeroed ``dx``); ``dw`` sums each
tap's shifted input times ``dy`` over N, OH and OW. It works on blocks of whole images with
at most ``TILE_BYTES`` of products (one image when an image needs more), handed out to
:func:`cconv.get_num_threads` Python threads (numpy releases the GIL in its loops; fewer
threads below ``MIN_WORK_PER_THREAD`` multiply-adds each): its extra memory is
``threads * TILE_BYTES`` plus, in the backward pass, ``threads * (KH*KW + 1) * C_out``
elements of weight-gradient sums, whatever the batch size. ``y`` and ``dx`` are the same
bits on any thread count, ``dw`` the same up to rounding.

A transposed convolution (:func:`conv2d_transpose`) is the data gradient of a convolution
and runs on the same kernels: with stride 1 as a forward convolution with the kernel rotated
by 180 degrees (every route above applies), otherwise as ``x W^T`` (BLAS) followed by
col2im; its backward pass is a forward convolution (``dx``) and a convolution's weight
gradient (``dw``).

Outputs of 1 MiB or more come from cconv's buffer cache (:func:`cconv.set_cache_limit`).

The route, threads and tiles of a convolution come from one compiled plan (``_conv.pxd``),
which this module tunes with its knobs (``TILE_BYTES``, ``WINOGRAD_MIN_CHANNELS``,
``WINOGRAD4_MIN_CHANNELS``, ``WINOGRAD_BLOCK_BYTES``, ``DIRECT_MAX_K``, ``SLOTS_PER_THREAD``, ``MIN_WORK_PER_THREAD``);
other packages call the same kernels and plan through cconv's Cython and C API
(``cconv/conv.pxd``, ``cconv/cconv.h``) and get the same results bit for bit (except for
depthwise convolutions, which the compiled plan sends to the im2col route: the same values
up to rounding).

Calling overhead: an op checks its arguments and normalises them once per distinct set of
shapes and plain arguments (ints, strings, pairs) and remembers the result; later calls of
conv2d and max_pool2d on C-contiguous float arrays, with one thread's work and small
outputs, then run from C altogether (``_core.conv2d_fast``, ``max_pool2d_fast``).
"""
from __future__ import annotations

import math
import operator
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _config
from ._config import get_num_threads

if TYPE_CHECKING:  # annotations only: nothing here is imported at run time
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike, NDArray

    _IntOrPair = int | Sequence[int]
    _Padding = int | str | Sequence[int] | Sequence[Sequence[int]]
    _Pads = tuple[tuple[int, int], tuple[int, int]]
    _FloatArray = NDArray[np.floating[Any]]

__all__ = [
    "im2col", "col2im", "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward", "correlate2d", "convolve2d",
    "conv_output_size", "normalize_pair", "normalize_padding", "relu_backward",
    "conv2d_transpose", "conv2d_transpose_backward", "conv_transpose_output_size",
    "normalize_transpose_padding", "upsample2d", "upsample2d_backward", "zero_pad2d", "crop2d",
    "normalize_pads", "matmul", "relu", "conv2d_max_pool2d", "conv2d_max_pool2d_backward",
    "prepare_conv2d_max_pool2d", "prepare_matmul", "route_state",
]
# Also public: Workspace (exported as cconv.Workspace), the scratch memory of the convolutions;
# adam_update, the compiled kernel of cconv.optim's Adam (an optimizer step, not an op).

_INT_MAX = 2**31 - 1       # BLAS dimensions and leading dimensions are 32-bit ints
_GEOM_MAX = 2**31 - 1      # stride/padding/dilation/kernel sizes beyond this are rejected

_core = _config._core()


# ---------------------------------------------------------------------------------
# Argument normalisation (shared by the layers)
# ---------------------------------------------------------------------------------
def _as_int(v, name, what):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be {what}, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {v!r}") from None


def normalize_pair(v: _IntOrPair, name: str, minimum: int = 1) -> tuple[int, int]:
    """Turn an int or a pair into a pair of ints ``>= minimum``.

    Raises
    ------
    TypeError
        When ``v`` is not an int or a pair of ints.
    ValueError
        When a value is below ``minimum`` or absurdly large.
    """
    what = f"{'a positive' if minimum == 1 else 'a non-negative'} int or pair"
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be {what}, got {v!r}")
        pair = tuple(_as_int(e, name, what) for e in v)
    else:
        i = _as_int(v, name, what)
        pair = (i, i)
    if min(pair) < minimum or max(pair) > _GEOM_MAX:
        raise ValueError(f"{name} must be {what}, got {tuple(v) if isinstance(v, list) else v!r}")
    return pair  # type: ignore[return-value]


def normalize_padding(padding: _Padding, kernel_size: _IntOrPair, dilation: _IntOrPair = 1,
                      stride: _IntOrPair = 1,
                      input_hw: tuple[int, int] | None = None) -> _Pads:
    """Turn any padding form into explicit ``((top, bottom), (left, right))``.

    Parameters
    ----------
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
    kernel_size, dilation, stride : int or pair
        Needed by ``"same"``.
    input_hw : (H, W) or None
        Needed by ``"same"`` when stride > 1 (TensorFlow's rule: output ``ceil(H / s)``,
        the odd pixel of padding at the bottom/right).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode != "same":
            raise ValueError(f"padding must be an int, a pair, ((top, bottom), (left, right)), "
                             f"'valid' or 'same', got {padding!r}")
        k = normalize_pair(kernel_size, "kernel_size")
        d = normalize_pair(dilation, "dilation")
        s = normalize_pair(stride, "stride")
        pads = []
        for i in range(2):
            eff = d[i] * (k[i] - 1) + 1
            if s[i] == 1:
                total = eff - 1
            else:
                if input_hw is None:
                    raise ValueError("padding='same' with stride > 1 needs the input size")
                size = normalize_pair(tuple(input_hw) if isinstance(input_hw, (tuple, list))
                                      else input_hw, "input_hw", minimum=0)[i]
                out = -(-size // s[i])
                total = max((out - 1) * s[i] + eff - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    what = "a non-negative int, a pair or ((top, bottom), (left, right))"
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
        isinstance(p, (tuple, list)) for p in padding
    ):
        pads = tuple(normalize_pair(tuple(p), "padding", minimum=0) for p in padding)
        return pads
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        raise ValueError(f"padding must be {what}, got {padding!r}")
    ph, pw = normalize_pair(padding, "padding", minimum=0)
    return ((ph, ph), (pw, pw))


def conv_output_size(size: int, kernel: int, stride: int = 1, pad_before: int = 0,
                     pad_after: int = 0, dilation: int = 1) -> int:
    """``floor((size + pad_before + pad_after - dilation*(kernel-1) - 1) / stride) + 1``.

    Raises ValueError for a negative size or padding and a kernel, stride or dilation
    below 1 (the result may be below 1: the window does not fit).
    """
    a = _size_args(size=size, kernel=kernel, stride=stride, pad_before=pad_before,
                   pad_after=pad_after, dilation=dilation)
    return (a["size"] + a["pad_before"] + a["pad_after"] - a["dilation"] * (a["kernel"] - 1)
            - 1) // a["stride"] + 1


def _size_args(**args):
    """The integer arguments of an output-size formula, checked (kernel, stride and
    dilation >= 1, the others >= 0)."""
    for name, v in args.items():
        minimum = 1 if name in ("kernel", "stride", "dilation") else 0
        args[name] = v = _as_int(v, name, f"an int >= {minimum}")
        if v < minimum or v > 2**62:
            raise ValueError(f"{name} must be an int >= {minimum}, got {v}")
    return args


def _geometry(shape, kernel_size, stride, padding, dilation, what="kernel"):
    """Validated (k, s, pads, d, out_hw) for a spatial operation on an NHWC input shape."""
    hw = shape[1:3]
    k = normalize_pair(kernel_size, "kernel_size" if what == "kernel" else "pool_size")
    s = normalize_pair(stride, "stride")
    d = normalize_pair(dilation, "dilation")
    pads = normalize_padding(padding, k, d, s, hw)
    out = []
    for i, axis in enumerate(("height", "width")):
        eff = d[i] * (k[i] - 1) + 1
        padded = hw[i] + pads[i][0] + pads[i][1]
        if eff > padded:
            raise ValueError(
                f"{what} {k} (dilated extent {eff} in {axis}) is larger than the padded input: "
                f"input of shape {tuple(shape)} has {axis} {hw[i]}, + padding {pads[i]} = {padded}")
        out.append(conv_output_size(hw[i], k[i], s[i], pads[i][0], pads[i][1], d[i]))
    return k, s, pads, d, tuple(out)


# ---------------------------------------------------------------------------------
# Array checks
# ---------------------------------------------------------------------------------
_LAYOUTS = {"x": " (N, H, W, C)", "dy": " (N, OH, OW, C)", "w": " (KH, KW, C_in/groups, C_out)",
            "image": " (H, W)", "kernel": " (KH, KW)", "cols": " (N*OH*OW, KH*KW*C)",
            "b": " (C_out,)"}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INT32, _INT64 = _INDICES = (np.dtype(np.int32), np.dtype(np.int64))
_INT32_MAX = 2**31 - 1


def _float_array(a, name, ndim=None, contiguous=True):
    """``a`` as a (C-contiguous unless told otherwise) float32/float64 ndarray.

    A copy is made only when needed."""
    if type(a) is np.ndarray and a.dtype in _FLOATS and a.ndim == ndim and a.flags.c_contiguous:
        return a                                    # the usual case, checked cheaply
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = np.asarray(a)
    if arr.dtype not in _FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype} "
                        f"(shape {arr.shape})")
    if ndim is not None and arr.ndim != ndim:
        layout = _LAYOUTS.get(name, "")
        raise ValueError(f"{name} must be {ndim}-D{layout}, got shape {arr.shape}")
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return arr if arr.flags.c_contiguous or not contiguous else np.ascontiguousarray(arr)


_FLOATS = (np.float32, np.float64)


def _same_dtype(**arrays):
    items = [(k, v) for k, v in arrays.items() if v is not None]
    dtypes = {v.dtype for _, v in items}
    if len(dtypes) > 1:
        desc = ", ".join(f"{k} {v.dtype}" for k, v in items)
        raise TypeError(f"arrays must share one dtype, got {desc}")


def _positive_dims(shape, name, skip_batch=True):
    dims = shape[1:] if skip_batch else shape
    if any(d < 1 for d in dims):
        raise ValueError(f"{name} has a zero-size dimension: shape {shape}")


def _shape_arg(shape, name):
    try:
        shp = tuple(_as_int(s, name, "a tuple of 4 ints (N, H, W, C)") for s in shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of 4 ints (N, H, W, C), got {shape!r}") from None
    if len(shp) != 4 or min(shp) < 0 or min(shp[1:]) < 1:
        raise ValueError(f"{name} must be 4 non-negative ints (N, H, W, C) with H, W, C >= 1, "
                         f"got {shape!r}")
    return shp


def _output(out, name, shape, dtype, inputs=()):
    """The array to write a result of ``shape`` and ``dtype`` into: a new one when ``out`` is
    None, else ``out`` itself, which must be a writable, C-contiguous ndarray of exactly that
    shape and dtype sharing no memory with the ``inputs``. Refused before anything is
    written: TypeError for a wrong type or dtype, ValueError otherwise."""
    if out is None:
        return _alloc(shape, dtype)
    problem = _core.out_problem(out, shape, np.dtype(dtype), inputs)
    if problem == 0:
        return out
    if problem == 1:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if problem == 2:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {out.dtype}")
    if problem == 3:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if problem == 4:
        raise ValueError(f"{name} must be C-contiguous (shape {out.shape}, strides "
                         f"{out.strides})")
    if problem == 5:
        raise ValueError(f"{name} is read-only")
    raise ValueError(f"{name} shares memory with an input of shape {inputs[problem - 6].shape}; "
                     f"the kernels read their inputs while they write {name}")


def _outputs(out, names, count):
    """``out`` as ``count`` arrays (or Nones) for the ops that return several results."""
    if out is None:
        return (None,) * count
    if not isinstance(out, tuple) or len(out) != count:
        raise TypeError(f"out must be None or a tuple of {count} arrays ({', '.join(names)}), "
                        f"got {type(out).__name__}"
                        + (f" of {len(out)}" if isinstance(out, tuple) else ""))
    return out


def _gradient_outputs(out, need_dx, dy, x, w, cout):
    """The arrays (dx or None, dw, db) a convolution's backward pass writes, from its
    ``out=`` (see _outputs and _output), all checked before anything is written."""
    out_dx, out_dw, out_db = _outputs(out, ("dx", "dw", "db"), 3)
    if not need_dx and out_dx is not None:
        raise ValueError("out[0] must be None when need_dx is False (dx is not computed)")
    inputs = (dy, x, w)
    dx = _output(out_dx, "out[0]", x.shape, x.dtype, inputs) if need_dx else None
    dw = _output(out_dw, "out[1]", w.shape, x.dtype, inputs)
    db = _output(out_db, "out[2]", (cout,), x.dtype, inputs)
    return dx, dw, db


_MEMORY_LIMIT: int | None = None


def _memory_limit():
    global _MEMORY_LIMIT
    if _MEMORY_LIMIT is None:
        try:
            _MEMORY_LIMIT = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            _MEMORY_LIMIT = 1 << 46
    return _MEMORY_LIMIT


def _check_fits(shape, dtype):
    """The size in bytes of an array of this shape; MemoryError beyond physical memory."""
    nbytes = np.dtype(dtype).itemsize * math.prod(int(s) for s in shape)
    if nbytes > _memory_limit():
        raise MemoryError(f"cconv: an array of shape {tuple(shape)} and dtype "
                          f"{np.dtype(dtype).name} ({nbytes / 2**30:.1f} GiB) does not fit in memory")
    return nbytes


def _alloc(shape, dtype, zero=False):
    """np.empty/np.zeros that raises MemoryError up front for sizes beyond physical memory;
    arrays of 1 MiB or more come from the buffer cache."""
    dtype = np.dtype(dtype)
    if math.prod(shape) * dtype.itemsize < _CACHED_MIN_BYTES:      # small: no check needed
        return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
    nbytes = _check_fits(shape, dtype)
    if zero:
        return np.zeros(shape, dtype)
    return np.frombuffer(_core.Block(nbytes), dtype).reshape(shape)


#: Outputs of at least this many bytes come from the buffer cache (cconv.set_cache_limit).
_CACHED_MIN_BYTES = 1 << 20
_config.get_cache_limit()        # the limit from CCONV_CACHE_BYTES or the default


class Workspace:
    """Scratch memory that :func:`conv2d` and :func:`conv2d_backward` keep between calls.

    A convolution needs scratch besides its result (im2col tiles or Winograd blocks, one per
    thread, and per-thread weight-gradient sums). Passed as ``workspace=``, the same object
    serves call after call: it grows to the largest size asked for and is then reused, so a
    loop that also passes ``out=`` allocates nothing. Without it, each call allocates its
    scratch (buffers of 1 MiB or more come from cconv's buffer cache).

    Two calls must not use one workspace at the same time: give each Python thread its own.
    """

    __slots__ = ("_bytes", "_views")

    def __init__(self) -> None:
        self._bytes: NDArray[np.uint8] | None = None
        self._views: dict = {}          # (dtype, shapes) -> the arrays of the last such call

    @property
    def nbytes(self) -> int:
        """The memory it holds, in bytes."""
        return 0 if self._bytes is None else int(self._bytes.nbytes)

    def __repr__(self) -> str:
        return f"Workspace(nbytes={self.nbytes})"

    def _arrays(self, dtype, *shapes):
        """Arrays of ``dtype`` and the given shapes, carved out of the workspace (each on a
        64-byte boundary), growing it first when it is too small."""
        key = (dtype, shapes)
        views = self._views.get(key)
        if views is not None:
            return views
        dtype = np.dtype(dtype)
        offsets, total = [], 0
        for shape in shapes:
            offsets.append(total)
            total += -(-math.prod(shape) * dtype.itemsize // 64) * 64
        if self._bytes is None or self._bytes.nbytes < total:
            self._views.clear()                     # views of the old block go with it
            self._bytes = None
            self._bytes = _alloc((total,), np.uint8)
        views = [np.ndarray(shape, dtype, self._bytes, off) for shape, off in zip(shapes, offsets)]
        if len(self._views) >= 16:
            self._views.clear()
        self._views[key] = views
        return views


def _check_workspace(workspace):
    if workspace is not None and not isinstance(workspace, Workspace):
        raise TypeError(f"workspace must be a cconv.Workspace or None, got "
                        f"{type(workspace).__name__}")


def _scratch(workspace, dtype, *shapes):
    """Scratch arrays: from ``workspace`` (a :class:`Workspace`) or newly allocated."""
    if workspace is None:
        return [_alloc(shape, dtype) for shape in shapes]
    return workspace._arrays(dtype, *shapes)


# ---------------------------------------------------------------------------------
# Geometry of a call, validated once per distinct argument set
# ---------------------------------------------------------------------------------
_GEOMETRIES: dict = {}
_GEOMETRIES_MAX = 1024


def _memo(make, shapes, *args):
    """``make(*shapes, *args)``, remembered when every argument is plain (an int, None, a
    str, a pair of ints or a pair of such pairs, of exactly those types: _core.plain_args;
    ``shapes`` are tuples of ints): a loop that calls an op with the same shapes and arguments validates and
    normalises them once (and the compiled fast paths of conv2d and max_pool2d find the
    result here). An equal argument of another type (2.0 for 2) is never served from it."""
    if not _core.plain_args(args):
        return make(*shapes, *args)
    key = (make, shapes, args)
    try:
        return _GEOMETRIES[key]
    except KeyError:
        pass
    value = make(*shapes, *args)
    if len(_GEOMETRIES) >= _GEOMETRIES_MAX:
        _GEOMETRIES.clear()
    _GEOMETRIES[key] = value
    return value


# ---------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------
#: Max-pool outputs of at least this many bytes are written with non-temporal stores: they
#: would not stay in the cores' L2 caches anyway, and such stores skip reading every
#: output line from memory before overwriting it.
_STREAM_MIN_BYTES = 8 << 20


#: Below this many elements of work per thread, extra threads cost more than they save.
#: (The tests lower it to 1, with cconv._testing.forced, so that small inputs are split over
#: every thread as large ones are; forced also sets the route knobs below.)
MIN_WORK_PER_THREAD = 1 << 15


def _threads(work_items, work_size=None):
    """Threads for a kernel with ``work_items`` parallel items touching ``work_size`` elements:
    ``max(1, min(budget, items, size // MIN_WORK_PER_THREAD))``, the rule of the kernels' own
    sizing (cconv_threads in _platform.h). The budget is asked for only when the work could
    use more than one thread."""
    n = int(work_items)
    if work_size is not None:
        n = min(n, int(work_size) // MIN_WORK_PER_THREAD)
    return 1 if n <= 1 else min(n, get_num_threads())


#: A GEMM of at most this many multiply-adds runs on one thread in OpenBLAS whatever its
#: thread setting (65536 * GEMM_MULTITHREAD_THRESHOLD, 4 by default, in its interface/gemm.c).
_BLAS_SERIAL_MNK = 1 << 18


def _run(nt, gemm_mnk, fn, *args, blas=None):
    """Call a kernel on nt OpenMP threads with BLAS limited to the rest of the budget (or
    to ``blas`` threads).

    ``gemm_mnk`` bounds the size (m * n * k) of each GEMM the kernel makes: when BLAS would
    run them on one thread anyway, its thread setting is left alone (setting and restoring
    it costs more than a small convolution)."""
    if gemm_mnk <= _BLAS_SERIAL_MNK:
        return fn(*args, nt)
    with _config.blas_threads(blas or max(1, get_num_threads() // nt)):
        return fn(*args, nt)


def route_state() -> tuple[Any, ...]:
    """What the kernels' routes and thread counts depend on besides their operands: cconv's
    thread budget, the instruction-set level (``cconv._core.simd_level``) and this module's
    route knobs, as a tuple to compare. The functions of :func:`prepare_conv2d_max_pool2d`
    and :func:`prepare_matmul` keep what was planned under one value; cconv's models prepare
    theirs again when it changes."""
    return (get_num_threads(), _core.simd_level(), _tuning(WINOGRAD_MIN_CHANNELS, DIRECT_MAX_K),
            FILTER_CACHE_MAX_TILES, DEPTHWISE_MIN_CHANNELS, DEPTHWISE_MIN_OUTPUTS)


def matmul(a: ArrayLike, b: ArrayLike, trans_a: bool = False, trans_b: bool = False,
           out: NDArray[Any] | None = None, beta: float = 0.0) -> _FloatArray:
    """``op(a) @ op(b)``, or ``op(a) @ op(b) + beta * out`` written into ``out``: the GEMM of
    the dense layers, on cconv's OpenMP threads.

    ``op`` transposes its operand when ``trans_a`` / ``trans_b`` is set (no copy is made).
    Each thread makes one single-threaded BLAS call on its block of rows, so no BLAS thread
    pool is left spinning (OpenBLAS's threads busy-wait after a call) while the next
    convolution kernel needs the cores. Empty or huge operands, or an ``out`` that is not
    C-contiguous, go to numpy's matmul instead.

    Parameters
    ----------
    a : ndarray of shape (m, k), or (k, m) with ``trans_a``; float32 or float64
    b : ndarray of shape (k, n), or (n, k) with ``trans_b``; a's dtype
    out : ndarray of shape (m, n) and a's dtype, optional  # IN/OUT
        Receives the result; with ``beta`` != 0 its old values are kept scaled by ``beta``.
    beta : float, default 0.0

    Returns
    -------
    ndarray of shape (m, n)
        ``out`` when given.

    Raises
    ------
    TypeError
        Non-float operands, or operands of different dtypes.
    ValueError
        Operands that are not 2-D or whose inner dimensions differ; ``out`` of another shape
        or read-only.
    """
    if not (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
            and a.dtype == b.dtype and a.dtype in _FLOATS
            and (out is None or (type(out) is np.ndarray and out.dtype == a.dtype))):
        a = _float_array(a, "a", ndim=2, contiguous=False)      # the full checks, with messages
        b = _float_array(b, "b", ndim=2, contiguous=False)
        _same_dtype(a=a, b=b, out=out if isinstance(out, np.ndarray) else None)
    A = a.T if trans_a else a
    B = b.T if trans_b else b
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"the inner dimensions differ: op(a) has shape {A.shape}, op(b) {B.shape} "
                         f"(a {a.shape}, trans_a={bool(trans_a)}; b {b.shape}, trans_b={bool(trans_b)})")
    (m, k), n = A.shape, B.shape[1]
    if out is not None:
        if not isinstance(out, np.ndarray) or out.dtype not in (np.float32, np.float64):
            raise TypeError(f"out must be a float32 or float64 ndarray, got {type(out).__name__}")
        if out.shape != (m, n) or not out.flags.writeable:
            raise ValueError(f"out must be a writeable array of shape {(m, n)}, got shape {out.shape}"
                             f"{'' if out.flags.writeable else ' (read-only)'}")
    beta = float(beta)
    usual = (m * n * k > 0 and max(m, n, k, a.shape[1], b.shape[1]) <= _INT_MAX
             and (out is None or out.flags.c_contiguous))
    if not usual:
        with _config.blas_threads(get_num_threads()):
            r = A @ B
        if out is None:
            return r
        if beta:
            out *= beta
            out += r
        else:
            out[...] = r
        return out
    if out is None:
        out, beta = _alloc((m, n), a.dtype), 0.0
    nt = _matmul_threads(m, n, k, trans_b)
    _run(nt, -(-m // nt) * n * k, _core.matmul, bool(trans_a), bool(trans_b),
         np.ascontiguousarray(a), np.ascontiguousarray(b), beta, out, blas=1)
    return out


def _matmul_threads(m, n, k, trans_b):
    """Threads of _core.matmul for op(a) (m, k) @ op(b) (k, n).

    The rows split over the threads; a single row (one image), a gemv that streams the
    n * k elements of b, splits b into blocks of 16 rows of op(b), or of 16 columns with
    trans_b (_core.matmul). Its callers run BLAS on one thread also when the rows do not
    split (m = 1: one image): OpenBLAS would thread a (1, k) x (k, n) product itself and
    leave its pool spinning against the next kernel's threads (with its Haswell kernels,
    the paper network's predict() on one image took 5-120 ms instead of 1.2 ms; its
    AVX-512 kernels run such a product on one thread anyway)."""
    if m > 1:
        return _threads(m, m * n * k // 16)
    return _threads(-(-(n if trans_b else k) // 16), n * k)


def prepare_matmul(a_shape: Sequence[int], b: ArrayLike, trans_a: bool = False,
                   trans_b: bool = False) -> Callable[..., _FloatArray]:
    """:func:`matmul` for operands of one shape, checked and planned once (see
    :func:`prepare_conv2d_max_pool2d`).

    Parameters
    ----------
    a_shape : pair of ints
        The shape of the ``a`` the function will get (``(m, k)``, or ``(k, m)`` with
        ``trans_a``).
    b : ndarray of shape (k, n), or (n, k) with ``trans_b``; float32 or float64
        Gives the shape and the dtype of the ``b`` the function will get (its values are
        not kept).
    trans_a, trans_b : bool

    Returns
    -------
    f : function ``f(a, b, out=None, beta=0.0)``
        ``matmul(a, b, trans_a, trans_b, out, beta)``, bit for bit. ``a``, ``b`` (and
        ``out``) that are C-contiguous ndarrays of the prepared shapes and dtype (``out``
        writeable, of shape (m, n)) go straight to the kernel with the thread count planned
        here; any others go through :func:`matmul` itself.

    Raises
    ------
    TypeError, ValueError
        As :func:`matmul` for these shapes (``a_shape`` not 2 non-negative ints).
    """
    b = _float_array(b, "b", ndim=2, contiguous=False)
    try:
        ashape = tuple(_as_int(v, "a_shape", "a pair of ints") for v in a_shape)
    except TypeError:
        raise TypeError(f"a_shape must be a pair of ints, got {a_shape!r}") from None
    if len(ashape) != 2 or min(ashape) < 0:
        raise ValueError(f"a_shape must be 2 non-negative ints, got {a_shape!r}")
    ta, tb = bool(trans_a), bool(trans_b)
    (m, k), (kb, n) = ashape[::-1] if ta else ashape, b.shape[::-1] if tb else b.shape
    if k != kb:
        raise ValueError(f"the inner dimensions differ: op(a) has shape {(m, k)}, op(b) {(kb, n)} "
                         f"(a {ashape}, trans_a={ta}; b {b.shape}, trans_b={tb})")

    def general(a, b, out=None, beta=0.0):
        return matmul(a, b, ta, tb, out, beta)

    if m * n * k == 0 or max(m, n, k) > _INT_MAX:
        return general
    nt = _matmul_threads(m, n, k, tb)
    mnk, dt, bshape = -(-m // nt) * n * k, b.dtype, b.shape

    def prepared_matmul(a, b, out=None, beta=0.0):
        if not (_is_array(a, ashape, dt) and _is_array(b, bshape, dt) and
                (out is None or (_is_array(out, (m, n), dt) and out.flags.writeable))):
            return general(a, b, out, beta)
        if out is None:
            out, beta = _alloc((m, n), dt), 0.0
        _run(nt, mnk, _core.matmul, ta, tb, a, b, float(beta), out, blas=1)
        return out
    return prepared_matmul


# ---------------------------------------------------------------------------------
# Convolution routes: chosen by the compiled plan (_conv.make_plan), tuned by these knobs
# ---------------------------------------------------------------------------------
#: Upper bound on one thread's im2col tile, in bytes.
TILE_BYTES = 1 << 21

#: 3x3 stride-1 convolutions with at least this many input channels use Winograd
#: F(2x2, 3x3) (2.25x fewer multiplications than im2col + GEMM); set to None to disable.
WINOGRAD_MIN_CHANNELS: int | None = 16

#: The backward pass of a convolution on the Winograd route with at least this many input
#: channels uses Winograd F(4x4, 3x3) (36 products per 4x4 outputs instead of 4 x 16) where
#: its tiles need fewer multiplications than F(2x2, 3x3)'s (output maps of at least 3x3,
#: other than 5 or 6 on a side); 0: wherever the Winograd route applies; None: never (the
#: default: its float32 gradients are 4-8x further from the exact ones than F(2x2, 3x3)'s).
#: An opt-in: set it here, or ``CCONV_WINOGRAD4=1`` in the environment (16 at import).
WINOGRAD4_MIN_CHANNELS: int | None = (
    16 if os.environ.get("CCONV_WINOGRAD4", "").strip() not in ("", "0") else None)

#: Convolutions with KH*KW*C_in up to this (and float32, groups 1, an AVX-512, AVX2 or NEON
#: CPU; for the backward pass, need_dx=False) take the direct route. None: never.
DIRECT_MAX_K: int | None = 32
#: Upper bound on one thread's Winograd block (transformed inputs and outputs), in bytes.
WINOGRAD_BLOCK_BYTES = 1 << 20

#: Accumulating backward kernels cut their work into this many runs per thread, handed
#: out dynamically: a thread that the machine slows down (a shared host, another process)
#: takes fewer runs instead of holding up the others. Each run has its own accumulator, so
#: the sums depend on the run count only, not on which thread ran what.
SLOTS_PER_THREAD = 4

#: Depthwise convolutions (``groups == C_in > 1``, any channel multiplier ``C_out / C_in``)
#: with at least this many input channels and DEPTHWISE_MIN_OUTPUTS outputs (N*OH*OW*C_out) take
#: the depthwise route; None: never. (Smaller ones cost the im2col route less than the
#: depthwise route's ~60 numpy calls per forward and backward pass.)
DEPTHWISE_MIN_CHANNELS: int | None = 8
DEPTHWISE_MIN_OUTPUTS = 1 << 14

_GEMM, _WINOGRAD, _DIRECT, _WINOGRAD4 = 0, 1, 2, 3    # the routes, as _conv.pxd numbers them
_DEPTHWISE = 4                               # chosen here: the compiled plan does not know it
_ALL_THREADS = 1 << 30


def _tuning(winograd_min_channels, direct_max_k, winograd4_min_channels=...):
    """The compiled plan's tuning; winograd4_min_channels: WINOGRAD4_MIN_CHANNELS unless given."""
    if winograd4_min_channels is ...:
        winograd4_min_channels = WINOGRAD4_MIN_CHANNELS
    return (TILE_BYTES, -1 if winograd_min_channels is None else winograd_min_channels,
            WINOGRAD_BLOCK_BYTES, -1 if direct_max_k is None else direct_max_k,
            SLOTS_PER_THREAD, MIN_WORK_PER_THREAD,
            -1 if winograd4_min_channels is None else winograd4_min_channels)


_PLANS: dict = {}


def _plan(shape, k, cout, s, pads, d, groups, itemsize, backward, need_dx,
          winograd_min_channels=None, direct_max_k=None, default=True,
          winograd4_min_channels=None):
    """(route, threads, filter_threads, tile, slots, scratch, K, Kpad) of a convolution, from
    the compiled plan with this module's knobs (``default``) or the given thresholds.

    A plan made as if every thread were free and that takes one thread anyway does not
    depend on the thread budget: it is remembered (with the knobs and the instruction-set
    level it was made for). Otherwise the plan is made again for the thread budget and
    remembered with it too."""
    if default:
        winograd_min_channels, direct_max_k = WINOGRAD_MIN_CHANNELS, DIRECT_MAX_K
        winograd4_min_channels = WINOGRAD4_MIN_CHANNELS
        if _depthwise(shape, k, cout, s, pads, d, groups):
            return (_DEPTHWISE, 1, 1, 0, 1, 0, k[0] * k[1], k[0] * k[1])
    tuning = _tuning(winograd_min_channels, direct_max_k, winograd4_min_channels)
    key = (shape, k, cout, s, pads, d, groups, itemsize, backward, need_dx, tuning,
           _core.simd_level())
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    budget_key = (key, get_num_threads())
    plan = _PLANS.get(budget_key)
    if plan is not None:
        return plan
    args = (shape, k[0], k[1], cout, s[0], s[1], pads[0][0], pads[0][1], pads[1][0], pads[1][1],
            d[0], d[1], groups, itemsize, backward, need_dx)
    plan = _core.conv_plan(*args, _ALL_THREADS, tuning)
    if plan[1] > 1:
        plan = _core.conv_plan(*args, budget_key[1], tuning)
        key = budget_key
    if len(_PLANS) >= _GEOMETRIES_MAX:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _depthwise(shape, k, cout, s, pads, d, groups):
    """Whether this convolution takes the depthwise route."""
    if (DEPTHWISE_MIN_CHANNELS is None or groups != shape[3]
            or groups < max(2, DEPTHWISE_MIN_CHANNELS)):     # groups 1: an ordinary convolution
        return False
    oh, ow = ((shape[1 + i] + sum(pads[i]) - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in (0, 1))
    return shape[0] * oh * ow * cout >= DEPTHWISE_MIN_OUTPUTS


def _winograd_plan(N, OH, OW, C, cout, itemsize, by_image):
    """(threads, tiles per block, scratch elements per thread, runs) of a Winograd F(2x2, 3x3)
    call on an N x OH x OW x C input padded to keep its size. The backward (by_image) hands out runs of
    whole images, one accumulator slot each; the forward hands out blocks, and its runs
    count is its thread count."""
    _, nt, _, tb, slots, ws, _, _ = _plan((N, OH, OW, C), (3, 3), cout, (1, 1), ((1, 1), (1, 1)),
                                          (1, 1), 1, itemsize, by_image, by_image,
                                          winograd_min_channels=0, default=False)
    return nt, tb, ws, slots if by_image else nt


def _winograd_filter(w, out=None):
    """U (16, C, C_out) = G w G^T for every (input, output) channel pair (compiled); into
    ``out`` of shape (36, C, C_out): F(4x4, 3x3)'s transform."""
    U = _alloc((16, w.shape[2], w.shape[3]), w.dtype) if out is None else out
    _core.winograd_filter(w, U, _threads(U.size // MIN_WORK_PER_THREAD))
    return U


#: Winograd-transformed filters (F(2x2, 3x3)) of recent convolutions: (id(w), shape, dtype)
#: -> (a copy of w, U). A hit needs w's bytes to equal the copy's (one memcmp): weights
#: changed in place (an optimizer step) are transformed afresh into a new entry. A
#: batch-1 predict skips the transform, a large share of its call; a training step's
#: backward pass reuses its forward pass's transform (the weights change between steps).
_FILTERS: dict = {}
_FILTERS_MAX = 16
_FILTERS_LOCK = threading.Lock()
#: Calls of at most this many 2x2 output tiles use _FILTERS (None: every call; 0, as
#: cconv._testing.forced sets it: none, so that the transform runs on every call).
FILTER_CACHE_MAX_TILES: int | None = None


def _filter_cached(tiles):
    """Whether a Winograd call of ``tiles`` 2x2 tiles takes U from _FILTERS."""
    return FILTER_CACHE_MAX_TILES is None or tiles <= FILTER_CACHE_MAX_TILES


def _winograd_filter_cached(w):
    """:func:`_winograd_filter` of w, from _FILTERS when w is unchanged since the last call.
    Entries are replaced, never written into: a thread holding an old U keeps a whole one."""
    key = (id(w), w.shape, w.dtype)
    entry = _FILTERS.get(key)
    if entry is not None and _core.same_bytes(w, entry[0], _threads(w.size, w.size)):
        return entry[1]
    U = _winograd_filter(w, np.empty((16, w.shape[2], w.shape[3]), w.dtype))
    with _FILTERS_LOCK:             # the oldest entries go first: not the forward pass's
        _FILTERS.pop(key, None)     # own, which its backward pass is about to look up
        while len(_FILTERS) >= _FILTERS_MAX:
            del _FILTERS[next(iter(_FILTERS))]
        _FILTERS[key] = (w.copy(), U)
    return U


def _winograd_filter_grad(du_work, out=None):
    """dW (3, 3, C, C_out) = G^T dU G with dU the sum of the per-slot accumulators
    du_work (slots, 16 or 36, C, C_out): the adjoint of :func:`_winograd_filter` (compiled)."""
    dw = np.empty((3, 3, *du_work.shape[2:]), du_work.dtype) if out is None else out
    _core.winograd_filter_grad(du_work, dw, _threads(du_work.size // MIN_WORK_PER_THREAD))
    return dw


def _sum_threads(work, out):
    """Sum of the per-thread (or per-slot) accumulators work[0], work[1], ... in that order,
    into ``out``."""
    if len(work) == 1:
        np.copyto(out, work[0])
    else:
        np.add.reduce(work, axis=0, out=out)
    return out


# ---------------------------------------------------------------------------------
# The depthwise route: groups == C_in, output channel c*m + j from input channel c
# ---------------------------------------------------------------------------------
def _tap_range(out_size, in_size, stride, pad, offset):
    """(o0, o1, i0): at this kernel tap (offset = tap * dilation) outputs o0..o1-1 read the
    inputs i0, i0 + stride, ...; the other outputs read padding."""
    o0 = max(0, -(-(pad - offset) // stride))
    o1 = min(out_size, (in_size - 1 + pad - offset) // stride + 1)
    return o0, o1, o0 * stride - pad + offset


def _depthwise_taps(xshape, k, s, pads, d, out_hw):
    """[(kh, kw, out_slices, in_slices)] of the kernel taps that read some input: the output
    window (rows, columns) of a tap and the input rows and columns it reads."""
    taps = []
    for kh in range(k[0]):
        r0, r1, i0 = _tap_range(out_hw[0], xshape[1], s[0], pads[0][0], kh * d[0])
        for kw in range(k[1]):
            c0, c1, j0 = _tap_range(out_hw[1], xshape[2], s[1], pads[1][0], kw * d[1])
            if r0 < r1 and c0 < c1:
                taps.append((kh, kw, (slice(r0, r1), slice(c0, c1)),
                             (slice(i0, i0 + (r1 - r0 - 1) * s[0] + 1, s[0]),
                              slice(j0, j0 + (c1 - c0 - 1) * s[1] + 1, s[1]))))
    return taps


def _depthwise_blocks(x, cout, out_hw, work):
    """(threads, blocks): blocks of whole images, each of at most TILE_BYTES of products (or
    one image) and at least one per thread, for up to get_num_threads() threads (fewer below
    MIN_WORK_PER_THREAD multiply-adds, ``work``, per thread)."""
    N = x.shape[0]
    per_image = out_hw[0] * out_hw[1] * cout * x.itemsize
    nt = _threads(N, work)
    nb = max(1, min(-(-N // nt), TILE_BYTES // max(1, per_image)))
    blocks = [(n, min(N, n + nb)) for n in range(0, N, nb)]
    return min(nt, len(blocks)), blocks


def _on_threads(nt, blocks, fn, *args):
    """fn(t, blocks t, t + nt, t + 2*nt, ...) for t in 0..nt-1, on nt threads (the calling one
    among them: numpy releases the GIL in its loops); the first exception is raised here."""
    if nt == 1:
        with np.errstate(all="ignore"):
            fn(0, blocks, *args)
        return
    errors = []

    def run(t):
        try:
            with np.errstate(all="ignore"):   # IEEE results, silently (as the compiled routes)
                fn(t, blocks[t::nt], *args)
        except BaseException as e:     # re-raised in the calling thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(1, nt)]
    for th in threads:
        th.start()
    run(0)
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def _depthwise_forward(x, w, b, y, geo, workspace):
    """y = conv2d(x, w, b) with groups == C_in, as a sum over the taps of shifted input
    views times per-channel weights, block by block of images."""
    C, cout = x.shape[3], w.shape[3]
    m = cout // C
    w4 = w.reshape(w.shape[0], w.shape[1], C, m)
    nt, blocks = _depthwise_blocks(x, cout, y.shape[1:3], y.size * w.shape[0] * w.shape[1])
    nb = blocks[0][1] - blocks[0][0]
    prod, = _scratch(workspace, x.dtype, (nt, nb, *y.shape[1:3], C, m))
    taps = _depthwise_taps(x.shape, *geo)

    def run(t, mine):
        for n0, n1 in mine:
            yb = y[n0:n1].reshape(n1 - n0, *y.shape[1:3], C, m)
            yb[...] = 0 if b is None else b.reshape(C, m)
            for kh, kw, (ro, co), (ri, ci) in taps:
                p = prod[t, :n1 - n0, :ro.stop - ro.start, :co.stop - co.start]
                np.multiply(x[n0:n1, ri, ci, :, None], w4[kh, kw], out=p)
                ys = yb[:, ro, co]
                np.add(ys, p, out=ys)

    _on_threads(nt, blocks, run)
    return y


def _depthwise_backward(dy, x, w, dx, dw, db, geo, workspace):
    """The gradients of _depthwise_forward: dx accumulates the taps' dy * w (summed over the
    multiplier) into its shifted window, dw[tap] sums x's shifted view * dy over N, OH, OW
    (per thread, then over the threads in order)."""
    KH, KW, _, cout = w.shape
    C = x.shape[3]
    m = cout // C
    w4 = w.reshape(KH, KW, C, m)
    nt, blocks = _depthwise_blocks(x, cout, dy.shape[1:3], dy.size * KH * KW)
    nb = blocks[0][1] - blocks[0][0]
    prod, sums, dw_work = _scratch(workspace, x.dtype, (nt, nb, *dy.shape[1:3], C, m),
                                   (nt, C, m), (nt, KH, KW, C, m))
    taps = _depthwise_taps(x.shape, *geo)
    dw_work[...] = 0

    def run(t, mine):
        for n0, n1 in mine:
            dyb = dy[n0:n1].reshape(n1 - n0, *dy.shape[1:3], C, m)
            if dx is not None:
                dx[n0:n1] = 0
            for kh, kw, (ro, co), (ri, ci) in taps:
                p = prod[t, :n1 - n0, :ro.stop - ro.start, :co.stop - co.start]
                dys = dyb[:, ro, co]
                np.multiply(x[n0:n1, ri, ci, :, None], dys, out=p)
                np.add.reduce(p, axis=(0, 1, 2), out=sums[t])
                np.add(dw_work[t, kh, kw], sums[t], out=dw_work[t, kh, kw])
                if dx is not None:
                    dxs = dx[n0:n1, ri, ci]
                    for j in range(m):
                        np.multiply(dys[..., j], w4[kh, kw, :, j], out=p[..., 0])
                        np.add(dxs, p[..., 0], out=dxs)

    _on_threads(nt, blocks, run)
    _sum_threads(dw_work, dw.reshape(KH, KW, C, m))
    np.add.reduce(dy.reshape(-1, cout), axis=0, out=db)
    return dx, dw, db


# ---------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------
def _conv_operands(x, w, groups, w_layout):
    """x and w as float arrays (not yet copied) and groups as an int, checked."""
    x, w = _conv_arrays(x, w, w_layout)
    return x, w, _conv_groups(x.shape, w.shape, groups)


def _conv_arrays(x, w, w_layout):
    """x and w as float arrays of one dtype (not yet copied), w 4-D."""
    x = _float_array(x, "x", 4, contiguous=False)
    w = _float_array(w, "w", contiguous=False)
    if w.ndim != 4:
        raise ValueError(f"w must be 4-D{w_layout}, got shape {w.shape}")
    if x.dtype != w.dtype:
        _same_dtype(x=x, w=w)
    return x, w


def _conv_groups(xshape, wshape, groups):
    """groups as an int, checked with the operands' shapes (no zero-size dimension)."""
    _positive_dims(xshape, "x")
    _positive_dims(wshape, "w", skip_batch=False)
    groups = _as_int(groups, "groups", "a positive int")
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups}")
    return groups


def _check_bias(b, x, w, cout):
    """None, or b as a float array of shape (cout,) and x's dtype."""
    if b is None:
        return None
    b = _float_array(b, "b", 1)
    if b.dtype != x.dtype:
        _same_dtype(x=x, b=b)
    if b.shape != (cout,):
        raise ValueError(f"b must have shape (C_out,) = ({cout},) for w of shape {w.shape}, "
                         f"got {b.shape}")
    return b


def _conv_geometry(xshape, wshape, stride, padding, dilation, groups):
    """(groups, k, s, pads, d, (OH, OW)) of a convolution of an input of shape ``xshape``
    with weights of shape ``wshape``, every argument checked (shapes only: no data)."""
    groups = _conv_groups(xshape, wshape, groups)
    KH, KW, cg, cout = wshape
    C = xshape[3]
    if C % groups or cout % groups:
        raise ValueError(f"C_in ({C}, from x of shape {xshape}) and C_out ({cout}, from w of "
                         f"shape {wshape}) must both be divisible by groups={groups}")
    if cg * groups != C:
        raise ValueError(f"channel mismatch: x has {C} channels (shape {xshape}) but w of shape "
                         f"{wshape} expects C_in/groups = {cg} with groups={groups} "
                         f"({cg * groups} channels)")
    k, s, pads, d, out = _geometry(xshape, (KH, KW), stride, padding, dilation)
    kg = KH * KW * cg
    if max(kg, cout, C) > _INT_MAX:
        raise ValueError(f"w of shape {wshape} is too large for 32-bit BLAS dimensions "
                         f"(KH*KW*C_in/groups = {kg}, C_out = {cout}; at most {_INT_MAX})")
    return groups, k, s, pads, d, out


def _check_conv(x, w, stride, padding, dilation, groups):
    # Every check runs on the shapes before any copy: a huge (e.g. broadcast) argument
    # is refused without first being copied into a contiguous buffer.
    x, w = _conv_arrays(x, w, _LAYOUTS["w"])
    geo = _memo(_conv_geometry, (x.shape, w.shape), stride, padding, dilation, groups)
    return (np.ascontiguousarray(x), np.ascontiguousarray(w)) + geo


def _im2col_geometry(shape, kernel_size, stride, padding, dilation):
    _positive_dims(shape, "x")
    return _geometry(shape, kernel_size, stride, padding, dilation)


def im2col(x: ArrayLike, kernel_size: _IntOrPair, stride: _IntOrPair = 1, padding: _Padding = 0,
           dilation: _IntOrPair = 1, *, out: NDArray[Any] | None = None) -> _FloatArray:
    """Unfold the patches of ``x`` into the rows of a matrix.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), dtype float32 or float64
    kernel_size, stride, dilation : int or pair
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
    out : ndarray or None
        Where to write the result (see :ref:`out <out-arguments>` in the module docstring).

    Returns
    -------
    cols : ndarray of shape (N*OH*OW, KH*KW*C)
        Row ``(n*OH + i)*OW + j`` holds the patch under output pixel ``(n, i, j)`` in
        ``(kh, kw, c)`` order; padded positions are zero.
    """
    x = _float_array(x, "x", 4)
    k, s, pads, d, (OH, OW) = _memo(_im2col_geometry, (x.shape,), kernel_size, stride, padding,
                                    dilation)
    N, C = x.shape[0], x.shape[3]
    cols = _output(out, "out", (N * OH * OW, k[0] * k[1] * C), x.dtype, (x,))
    _core.im2col(x, cols, k[0], k[1], OH, OW, s[0], s[1], pads[0][0], pads[1][0], d[0], d[1],
                 _threads(N, cols.size))
    return cols


def col2im(cols: ArrayLike, input_shape: Sequence[int], kernel_size: _IntOrPair,
           stride: _IntOrPair = 1, padding: _Padding = 0, dilation: _IntOrPair = 1, *,
           out: NDArray[Any] | None = None) -> _FloatArray:
    """Fold rows of patches back into an image, summing overlapping contributions.

    The adjoint of :func:`im2col`: ``<im2col(x), c> == <x, col2im(c)>``.

    Parameters
    ----------
    cols : ndarray of shape (N*OH*OW, KH*KW*C), dtype float32 or float64
    input_shape : tuple (N, H, W, C)
        The shape of the image that :func:`im2col` unfolded.
    out : ndarray or None
        Where to write the result (see the module docstring).

    Returns
    -------
    x : ndarray of shape input_shape
    """
    cols = _float_array(cols, "cols", 2)
    N, H, W, C = shape = _shape_arg(input_shape, "input_shape")
    k, s, pads, d, (OH, OW) = _memo(_geometry, (shape,), kernel_size, stride, padding, dilation)
    expected = (N * OH * OW, k[0] * k[1] * C)
    if cols.shape != expected:
        raise ValueError(f"cols must have shape (N*OH*OW, KH*KW*C) = {expected} for input_shape "
                         f"{shape} and kernel_size {k}, got {cols.shape}")
    x = _output(out, "out", shape, cols.dtype, (cols,))    # zeroed by the kernel
    _core.col2im(cols, x, k[0], k[1], OH, OW, s[0], s[1], pads[0][0], pads[1][0], d[0], d[1],
                 _threads(N, cols.size), zero=True)
    return x


def conv2d(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None, stride: _IntOrPair = 1,
           padding: _Padding = 0, dilation: _IntOrPair = 1, groups: int = 1, *,
           out: NDArray[Any] | None = None, workspace: Workspace | None = None) -> _FloatArray:
    """2-D convolution (cross-correlation, as in every CNN framework), NHWC/HWIO.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C_in), dtype float32 or float64
    w : ndarray of shape (KH, KW, C_in // groups, C_out), same dtype
    b : ndarray of shape (C_out,) or None
    stride, dilation : int or pair
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
    groups : int
        Input and output channels are split into ``groups`` independent convolutions
        (``groups == C_in`` is a depthwise convolution).
    out : ndarray of shape (N, OH, OW, C_out) or None
        Where to write the result (see the module docstring).
    workspace : Workspace or None
        Scratch memory to reuse from call to call (see :class:`Workspace`).

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C_out), dtype of x

    Notes
    -----
    Extra memory besides ``y``: at most ``threads * TILE_BYTES`` bytes of im2col tiles
    (none for a 1x1, stride-1, unpadded kernel), or for the Winograd route (see the module
    docstring) ``threads * WINOGRAD_BLOCK_BYTES`` plus the transformed weights, or for the
    depthwise route ``threads * TILE_BYTES`` (one image's products when larger),
    independent of the batch size.
    """
    if groups == 1 or DEPTHWISE_MIN_CHANNELS is None:   # the fast path knows no depthwise route
        y = _core.conv2d_fast(x, w, b, (stride, padding, dilation, groups), out, workspace,
                              Workspace, _GEOMETRIES, _conv_geometry,
                              _tuning(WINOGRAD_MIN_CHANNELS, DIRECT_MAX_K), _CACHED_MIN_BYTES)
        if y is not None:            # the common case, done in C (see _core.conv2d_fast)
            return y
    x, w, groups, k, s, pads, d, (OH, OW) = _check_conv(x, w, stride, padding, dilation, groups)
    _check_workspace(workspace)
    N, _, _, C = x.shape
    cout = w.shape[3]
    b = _check_bias(b, x, w, cout)
    y = _output(out, "out", (N, OH, OW, cout), x.dtype, (x, w, b))
    if N == 0:
        return y
    route, nt, _, tile, _, scratch, K, _ = _plan(x.shape, k, cout, s, pads, d, groups,
                                                 x.itemsize, False, False)
    if route == _DEPTHWISE:
        _depthwise_forward(x, w, b, y, (k, s, pads, d, (OH, OW)), workspace)
    elif route == _DIRECT:
        _run(nt, 0, _core.direct_forward, x, w.reshape(K, cout), b, y, k[0], k[1], s[0], s[1],
             pads[0][0], pads[1][0], d[0], d[1])
    elif route == _WINOGRAD:
        U, work = _winograd_operands(w, N * ((OH + 1) // 2) * ((OW + 1) // 2), workspace,
                                     (nt, scratch))
        _run(nt, tile * C * cout, _core.winograd_forward, x, U, b, y,
             work, pads[0][0], pads[1][0], tile)
    else:
        # Scratch below the buffer cache's threshold is allocated by the kernel's wrapper.
        small = workspace is None and nt * scratch * x.itemsize < _CACHED_MIN_BYTES
        work = None if small else _scratch(workspace, x.dtype, (nt, scratch))[0]
        _run(nt, tile * K * (cout // groups), _core.conv2d_forward, x, w, b, y, work, k[0],
             k[1], s[0], s[1], pads[0][0], pads[1][0], d[0], d[1], groups, tile)
    return y


def _winograd_operands(w, tiles, workspace, *shapes, nk=16):
    """(U, *scratch) of a Winograd call of ``tiles`` tiles: the transformed filter (nk = 16:
    F(2x2, 3x3)'s, from _FILTERS when _filter_cached(tiles), where a training step's
    forward pass leaves it for its backward pass; 36: F(4x4, 3x3)'s) and scratch arrays of
    the given shapes."""
    if nk == 16 and _filter_cached(tiles):
        return (_winograd_filter_cached(w), *_scratch(workspace, w.dtype, *shapes))
    U, *rest = _scratch(workspace, w.dtype, (nk, w.shape[2], w.shape[3]), *shapes)
    return (_winograd_filter(w, U), *rest)


def _conv_pool_geometry(conv_shape, pool_size, pool_stride, pool_padding):
    """The max pool's geometry on a convolution's output: its errors name the pool
    arguments and the output's shape."""
    try:
        return _memo(_pool_geometry, (conv_shape,), pool_size, pool_stride, pool_padding)
    except ValueError as e:
        raise ValueError(f"the max pool (pool_size, pool_stride, pool_padding) of the "
                         f"convolution's output of shape {conv_shape}: {e}") from None


def _fused_conv_pool_plan(shape, cout, groups, itemsize, geo, pk, ps, ppads, index):
    """The compiled plan of :func:`conv2d_max_pool2d`'s fused route (a 2x2 stride-2 unpadded
    pool, int32 indices, a convolution on the direct or the Winograd route), or None: the
    call then runs conv2d and max_pool2d."""
    if pk != (2, 2) or ps != (2, 2) or ppads != ((0, 0), (0, 0)) or index is not _INT32:
        return None
    k, s, pads, d, _ = geo
    plan = _plan(shape, k, cout, s, pads, d, groups, itemsize, False, False)
    return plan if plan[0] in (_DIRECT, _WINOGRAD) else None


def _conv_pool_fused(plan, x, w, b, y, argmax, geo, relu, workspace):
    """The fused route's kernel on checked, C-contiguous operands: y (and argmax, or None)
    written directly."""
    route, nt, _, tile, _, scratch, K, _ = plan
    k, s, pads, d, (OH, OW) = geo
    if route == _DIRECT:
        _run(nt, 0, _core.direct_forward_pool, x, w.reshape(K, w.shape[3]), b, y, argmax, OH,
             OW, k[0], k[1], s[0], s[1], pads[0][0], pads[1][0], d[0], d[1], relu)
    else:
        U, work = _winograd_operands(w, y.shape[0] * y.shape[1] * y.shape[2], workspace,
                                     (nt, scratch))
        _run(nt, tile * x.shape[3] * w.shape[3], _core.winograd_forward_pool, x, U, b, y,
             argmax, work, OH, OW, pads[0][0], pads[1][0], tile, relu)


def conv2d_max_pool2d(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None,
                      stride: _IntOrPair = 1, padding: _Padding = 0, dilation: _IntOrPair = 1,
                      groups: int = 1, *, pool_size: _IntOrPair = 2,
                      pool_stride: _IntOrPair | None = None, pool_padding: _Padding = 0,
                      relu: bool = False, return_argmax: bool = False,
                      out: NDArray[Any] | tuple[NDArray[Any], NDArray[Any]] | None = None,
                      workspace: Workspace | None = None,
                      ) -> _FloatArray | tuple[_FloatArray, NDArray[np.signedinteger[Any]]]:
    """Convolution, optional ReLU, then max pooling, in one call: the inference forward of
    a convolution layer followed by a max-pool layer.

    The result is ``max_pool2d(conv2d(x, w, b, ...), pool_size, pool_stride,
    pool_padding)[0]`` (with ``relu``, of ``relu(conv2d(...))``), bit for bit, NaN
    included. When the pool is 2x2 with stride 2 and no padding and the convolution takes
    the Winograd or the direct route (see the module docstring), the kernels write the
    pooled output directly and the convolution's output (4x larger) never goes to memory:
    the Winograd route computes one 2x2 output tile per pool window (the tiles of the last
    row/column of an odd-sized output, which the pool drops, are not computed at all), the
    direct route two output rows at a time into a per-thread buffer of ``2 * OW * C_out``
    floats (or, without ``return_argmax``, in the registers where the module docstring
    says). Other calls run :func:`conv2d` then :func:`max_pool2d` (and :func:`relu`).
    With ``return_argmax`` the pool's argmax comes too, as :func:`max_pool2d` gives it
    (for :func:`max_pool2d_backward` with the convolution's output shape): the training
    forward of a convolution + max-pool pair.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C_in), dtype float32 or float64
    w : ndarray of shape (KH, KW, C_in // groups, C_out), same dtype
    b : ndarray of shape (C_out,) or None
    stride, dilation : int or pair
        Of the convolution.
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
        Of the convolution.
    groups : int
        As in :func:`conv2d`.
    pool_size : int or pair
    pool_stride : int, pair or None
        Defaults to ``pool_size``.
    pool_padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
        As in :func:`max_pool2d`.
    relu : bool
        Apply ReLU (``max(., 0)``, a NaN kept) to the convolution's output first. ReLU and
        max commute, so it is applied to the (smaller) pooled output, with the same result.
        (The argmax is that of the pool of the convolution's output before the ReLU: it
        differs only in windows whose values are all <= 0, where the output is 0.)
    return_argmax : bool
        Also return the pool's argmax.
    out : ndarray of shape (N, PH, PW, C_out), a tuple (y, argmax) with return_argmax, or None
        Where to write the result(s) (see the module docstring).
    workspace : Workspace or None
        Scratch memory to reuse from call to call (see :class:`Workspace`).

    Returns
    -------
    y : ndarray of shape (N, PH, PW, C_out), dtype of x
        ``(PH, PW)``: the pooled size of the convolution's ``(OH, OW)`` output (for the
        2x2 stride-2 pool, ``(OH // 2, OW // 2)``).
    argmax : ndarray of int32 (int64 when OH * OW >= 2**31), shape of y
        With ``return_argmax`` only: the flat index ``h * OW + w`` of each window's winner
        in its plane of the convolution's output, as :func:`max_pool2d` gives it.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, ``relu`` not a bool, ``workspace`` not
        a :class:`Workspace`, ``return_argmax`` not a bool.
    ValueError
        What :func:`conv2d` and :func:`max_pool2d` refuse (shapes, channels, geometry, a
        pool window larger than the convolution's output), ``out`` of the wrong shape.

    Notes
    -----
    Extra memory besides ``y``: that of :func:`conv2d`'s route on the fused path (no
    convolution output); on the other path, the convolution's output and the pool's argmax.
    """
    x, w, groups, k, s, pads, d, (OH, OW) = _check_conv(x, w, stride, padding, dilation, groups)
    _check_workspace(workspace)
    for name, flag in (("relu", relu), ("return_argmax", return_argmax)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    N = x.shape[0]
    cout = w.shape[3]
    b = _check_bias(b, x, w, cout)
    conv_shape = (N, OH, OW, cout)
    pk, ps, ppads, (PH, PW) = _conv_pool_geometry(conv_shape, pool_size, pool_stride,
                                                  pool_padding)
    shape = (N, PH, PW, cout)
    index = _argmax_dtype(conv_shape)
    if return_argmax:
        out_y, out_arg = _outputs(out, ("y", "argmax"), 2)
        if index is _INT32 and getattr(out_arg, "dtype", None) == _INT64:
            index = _INT64                # int64 indices asked for: the unfused pool writes them
        y = _output(out_y, "out[0]", shape, x.dtype, (x, w, b))
        argmax = _output(out_arg, "out[1]", shape, index, (x, w, b))
    else:
        y, argmax = _output(out, "out", shape, x.dtype, (x, w, b)), None
    result = (y, argmax) if return_argmax else y
    if N == 0:
        return result
    geo = (k, s, pads, d, (OH, OW))
    plan = _fused_conv_pool_plan(x.shape, cout, groups, x.itemsize, geo, pk, ps, ppads, index)
    if plan is not None:
        _conv_pool_fused(plan, x, w, b, y, argmax, geo, bool(relu), workspace)
        return result
    z = conv2d(x, w, b, s, pads, d, groups, workspace=workspace)
    max_pool2d(z, pk, ps, ppads, out=(y, _alloc(shape, index) if argmax is None else argmax))
    if relu:
        _core.relu_forward(y.reshape(-1), y.reshape(-1), _threads(y.size, y.size))
    return result


def _is_array(a, shape, dtype):
    """Whether ``a`` is a C-contiguous ndarray of exactly this shape and dtype."""
    return type(a) is np.ndarray and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous


def prepare_conv2d_max_pool2d(x_shape: Sequence[int], w: ArrayLike, b: ArrayLike | None = None,
                              stride: _IntOrPair = 1, padding: _Padding = 0,
                              dilation: _IntOrPair = 1, groups: int = 1, *,
                              pool_size: _IntOrPair = 2, pool_stride: _IntOrPair | None = None,
                              pool_padding: _Padding = 0, relu: bool = False,
                              ) -> Callable[..., _FloatArray]:
    """:func:`conv2d_max_pool2d` for inputs of one shape, its arguments checked and its route
    planned once: for code that makes the same call again and again (a model's inference
    plan, a serving loop), where the checks cost as much as a small convolution.

    Parameters
    ----------
    x_shape : tuple of 4 ints (N, H, W, C_in)
        The shape of the inputs the function will get.
    w, b, stride, padding, dilation, groups, pool_size, pool_stride, pool_padding, relu
        As in :func:`conv2d_max_pool2d`; ``w`` and ``b`` give the shapes and the dtype of
        the weights the function will get (their values are not kept).

    Returns
    -------
    f : function ``f(x, w, b, workspace=None) -> y``
        ``conv2d_max_pool2d(x, w, b, stride, padding, dilation, groups, pool_size=...,
        pool_stride=..., pool_padding=..., relu=relu, workspace=workspace)``, bit for bit.
        Operands that are C-contiguous ndarrays of the prepared shapes and dtype go straight
        to the kernel of the route planned here; any others go through
        :func:`conv2d_max_pool2d` itself (its conversions, checks and messages). The route
        and thread count are those of :func:`route_state` at preparation: prepare again
        after changing the thread budget or the route knobs.

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d_max_pool2d` for these shapes and arguments (``x_shape`` not 4
        non-negative ints).
    """
    xs = _shape_arg(x_shape, "x_shape")
    w = _float_array(w, "w", contiguous=False)
    if w.ndim != 4:
        raise ValueError(f"w must be 4-D{_LAYOUTS['w']}, got shape {w.shape}")
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    groups, k, s, pads, d, (OH, OW) = _memo(_conv_geometry, (xs, w.shape), stride, padding,
                                            dilation, groups)
    cout = w.shape[3]
    if b is not None:
        b = _float_array(b, "b", 1)
        if b.dtype != w.dtype:
            _same_dtype(w=w, b=b)
    b = _check_bias(b, w, w, cout)
    conv_shape = (xs[0], OH, OW, cout)
    pk, ps, ppads, (PH, PW) = _conv_pool_geometry(conv_shape, pool_size, pool_stride,
                                                  pool_padding)
    relu = bool(relu)

    def general(x, w, b, workspace=None):
        return conv2d_max_pool2d(x, w, b, stride, padding, dilation, groups,
                                 pool_size=pool_size, pool_stride=pool_stride,
                                 pool_padding=pool_padding, relu=relu, workspace=workspace)

    geo = (k, s, pads, d, (OH, OW))
    plan = None if xs[0] == 0 else _fused_conv_pool_plan(
        xs, cout, groups, w.itemsize, geo, pk, ps, ppads, _argmax_dtype(conv_shape))
    if plan is None:
        return general
    dt, wshape, shape = w.dtype, w.shape, (xs[0], PH, PW, cout)
    bshape = None if b is None else b.shape

    def conv_max_pool(x, w, b, workspace=None):
        if not (_is_array(x, xs, dt) and _is_array(w, wshape, dt) and
                (b is None if bshape is None else _is_array(b, bshape, dt))
                and (workspace is None or type(workspace) is Workspace)):
            return general(x, w, b, workspace)
        y = _alloc(shape, dt)
        _conv_pool_fused(plan, x, w, b, y, None, geo, relu, workspace)
        return y
    return conv_max_pool


def conv2d_backward(dy: ArrayLike, x: ArrayLike, w: ArrayLike, stride: _IntOrPair = 1,
                    padding: _Padding = 0, dilation: _IntOrPair = 1, groups: int = 1,
                    need_dx: bool = True, *,
                    out: tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any]] | None = None,
                    workspace: Workspace | None = None,
                    ) -> tuple[_FloatArray | None, _FloatArray, _FloatArray]:
    """Gradients of :func:`conv2d` with respect to its input, weights and bias.

    ``dw`` is the valid cross-correlation of ``x`` with ``dy``; ``dx`` is the full
    convolution of ``dy`` with ``w`` rotated by 180 degrees (computed as ``dY W^T``
    followed by col2im, or on the Winograd route as the adjoint of its forward pass, by
    F(2x2, 3x3) or F(4x4, 3x3), see the module docstring);
    ``db`` is ``dy`` summed over N, OH, OW.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, C_out)
        Gradient of the loss with respect to the output of ``conv2d(x, w, ...)``.
    x, w, stride, padding, dilation, groups
        As given to :func:`conv2d`.
    need_dx : bool
        When False, ``dx`` is not computed (the first layer of a network never needs
        it, and it is the most expensive GEMM there) and None is returned in its place.
    out : tuple (dx, dw, db) or None
        Where to write the results (see the module docstring); ``dx`` is None when
        ``need_dx`` is False.
    workspace : Workspace or None
        Scratch memory to reuse from call to call (see :class:`Workspace`).

    Returns
    -------
    dx : ndarray of x's shape, or None
    dw : ndarray of w's shape
    db : ndarray of shape (C_out,)
    """
    x, w, groups, k, s, pads, d, (OH, OW) = _check_conv(x, w, stride, padding, dilation, groups)
    dy = _float_array(dy, "dy", 4)
    if dy.dtype != x.dtype:
        _same_dtype(x=x, dy=dy)
    N, _, _, C = x.shape
    cout = w.shape[3]
    if dy.shape != (N, OH, OW, cout):
        raise ValueError(f"dy must have the output shape (N, OH, OW, C_out) = "
                         f"{(N, OH, OW, cout)} for x of shape {x.shape} and w of shape "
                         f"{w.shape}, got {dy.shape}")
    _check_workspace(workspace)
    dx, dw, db = _gradient_outputs(out, need_dx, dy, x, w, cout)   # every one written below
    if N == 0:
        dw[...] = 0
        db[...] = 0
        return dx, dw, db
    route, nt, _, tile, slots, scratch, K, Kpad = _plan(x.shape, k, cout, s, pads, d, groups,
                                                       x.itemsize, True, need_dx)
    if route == _DEPTHWISE:
        return _depthwise_backward(dy, x, w, dx, dw, db, (k, s, pads, d, (OH, OW)), workspace)
    if route == _DIRECT:
        dw_work, db_work = _scratch(workspace, x.dtype, (slots, Kpad, cout), (slots, cout))
        _run(nt, 0, _core.direct_backward_weights, dy, x, dw_work, db_work, k[0], k[1], s[0],
             s[1], pads[0][0], pads[1][0], d[0], d[1])
        _sum_threads(dw_work[:, :K], dw.reshape(K, cout))
    elif route in (_WINOGRAD, _WINOGRAD4):
        nk = 16 if route == _WINOGRAD else 36        # transformed slots per tile
        U, du_work, db_work, work = _winograd_operands(
            w, N * ((OH + 1) // 2) * ((OW + 1) // 2), workspace, (slots, nk, C, cout),
            (slots, cout), (nt, scratch), nk=nk)
        _run(nt, tile * C * cout, _core.winograd_backward, dy, x, U, dx,
             du_work, db_work, work, pads[0][0], pads[1][0], tile, bool(need_dx))
        _winograd_filter_grad(du_work, dw)
    else:
        work, dw_work, db_work = _scratch(workspace, x.dtype, (nt, scratch), (slots, K, cout),
                                          (slots, cout))
        _run(nt, tile * K * (cout // groups), _core.conv2d_backward, dy, x, w, dx, dw_work,
             db_work, work, k[0], k[1], s[0], s[1], pads[0][0], pads[1][0], d[0], d[1], groups,
             tile)
        _sum_threads(dw_work, dw.reshape(K, cout))
    _sum_threads(db_work, db)
    return dx, dw, db



def conv2d_max_pool2d_backward(dy: ArrayLike, argmax: ArrayLike, x: ArrayLike, w: ArrayLike,
                               stride: _IntOrPair = 1, padding: _Padding = 0,
                               dilation: _IntOrPair = 1, groups: int = 1,
                               need_dx: bool = True, *, pool_size: _IntOrPair = 2,
                               pool_stride: _IntOrPair | None = None,
                               pool_padding: _Padding = 0,
                               relu_output: ArrayLike | None = None,
                               out: tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any]]
                               | None = None,
                               workspace: Workspace | None = None,
                               ) -> tuple[_FloatArray | None, _FloatArray, _FloatArray]:
    """Gradients of :func:`conv2d_max_pool2d` with respect to the convolution's input,
    weights and bias, from the gradient of its pooled output.

    The result is ``conv2d_backward(max_pool2d_backward(dy, argmax, (N, OH, OW, C_out)),
    x, w, ...)``, bit for bit, except on the Winograd route for an odd-sized convolution
    output (below): the same values to rounding there. After ``relu=True``, pass its
    pooled output as ``relu_output``: the result is then that of ``dy`` replaced by
    ``relu_backward(dy, relu_output)`` (the ReLU ran on the pooled output), which the fused
    kernels below apply where they read ``dy``, without a pass of its own. When the pool is
    2x2 with stride 2 and no padding, ``argmax`` is int32 and the
    convolution's backward pass takes the direct route (``need_dx=False``) or Winograd
    F(2x2, 3x3), the kernels read ``dy`` and ``argmax`` where they would read the
    convolution's output gradient, so that gradient (4x larger) never goes to memory: the
    direct route rebuilds it one output row at a time in a per-thread buffer, the Winograd
    route one pool window per 2x2 tile. The Winograd route skips the tiles of the last
    row/column of an odd-sized output, whose gradient the pool makes 0 (the 29x29 output of
    the paper network's conv2: 196 tiles of 225 per image); that changes the sizes of the
    GEMMs that sum over tiles, so ``dw`` (and ``dx``) may differ from the unfused pair's in
    the last bits (4e-7 to 8e-7 of the largest ``dw`` at batch 128 on that layer). Other
    calls run the two functions.

    Parameters
    ----------
    dy : ndarray of shape (N, PH, PW, C_out)
        Gradient of the loss with respect to the pooled output.
    argmax : ndarray of integers, shape of dy
        The pool's argmax, as ``conv2d_max_pool2d(..., return_argmax=True)`` or
        :func:`max_pool2d` on the convolution's output give it.
    x, w, stride, padding, dilation, groups, pool_size, pool_stride, pool_padding
        As given to :func:`conv2d_max_pool2d`.
    relu_output : ndarray of dy's shape and dtype, or None
        The output of ``conv2d_max_pool2d(..., relu=True)``: the gradient is that of the
        ReLU too. None: no ReLU.
    need_dx, out, workspace
        As in :func:`conv2d_backward`.

    Returns
    -------
    dx, dw, db
        As :func:`conv2d_backward` returns them (``dx`` None when ``need_dx`` is False).

    Raises
    ------
    TypeError, ValueError
        What :func:`conv2d_backward` and :func:`max_pool2d_backward` refuse; ``dy`` not of
        the pooled shape, ``argmax`` or ``relu_output`` not of dy's shape, ``relu_output``
        not of dy's dtype.
    """
    x, w, groups, k, s, pads, d, (OH, OW) = _check_conv(x, w, stride, padding, dilation, groups)
    _check_workspace(workspace)
    if not isinstance(need_dx, (bool, np.bool_)):
        raise TypeError(f"need_dx must be a bool, got {type(need_dx).__name__}")
    dy = _float_array(dy, "dy", 4)
    if dy.dtype != x.dtype:
        _same_dtype(x=x, dy=dy)
    N, _, _, C = x.shape
    cout = w.shape[3]
    conv_shape = (N, OH, OW, cout)
    pk, ps, ppads, (PH, PW) = _conv_pool_geometry(conv_shape, pool_size, pool_stride,
                                                  pool_padding)
    if dy.shape != (N, PH, PW, cout):
        raise ValueError(f"dy must have the pooled output's shape (N, PH, PW, C_out) = "
                         f"{(N, PH, PW, cout)} for x of shape {x.shape}, w of shape {w.shape} "
                         f"and this pool, got {dy.shape}")
    a = argmax
    if type(a) is not np.ndarray or a.dtype != _INT32 or not a.flags.c_contiguous:
        a = np.asarray(argmax)
        if a.dtype.kind not in "iu":
            raise TypeError(f"argmax must be an integer array (int32 or int64), got dtype "
                            f"{a.dtype} (shape {a.shape})")
    if a.shape != dy.shape:
        raise ValueError(f"argmax must have dy's shape {dy.shape}, got {a.shape}")
    mask = None
    if relu_output is not None:
        mask = _float_array(relu_output, "relu_output", 4)
        _same_dtype(dy=dy, relu_output=mask)
        if mask.shape != dy.shape:
            raise ValueError(f"relu_output must have dy's shape {dy.shape}, got {mask.shape}")
    dx, dw, db = _gradient_outputs(out, need_dx, dy, x, w, cout)   # every one written below
    if (N and PH and PW and pk == (2, 2) and ps == (2, 2) and ppads == ((0, 0), (0, 0))
            and a.dtype == _INT32 and a.flags.c_contiguous):
        route, nt, _, tile, slots, scratch, K, Kpad = _plan(x.shape, k, cout, s, pads, d, groups,
                                                           x.itemsize, True, need_dx)
        matched = -1
        if route == _DIRECT:
            dw_work, db_work = _scratch(workspace, x.dtype, (slots, Kpad, cout), (slots, cout))
            matched = _run(nt, 0, _core.direct_backward_weights_pool, dy, a, mask, x, dw_work,
                           db_work, OH, OW, k[0], k[1], s[0], s[1], pads[0][0], pads[1][0], d[0],
                           d[1])
            if matched == dy.size:
                _sum_threads(dw_work[:, :K], dw.reshape(K, cout))
        elif route == _WINOGRAD:
            U, du_work, db_work, work = _winograd_operands(
                w, N * PH * PW, workspace, (slots, 16, C, cout), (slots, cout), (nt, scratch))
            matched = _run(nt, tile * C * cout, _core.winograd_backward_pool, dy, a, mask, x,
                           U, dx, du_work, db_work, work, OH, OW,
                           pads[0][0], pads[1][0], tile, bool(need_dx))
            if matched == dy.size:
                _winograd_filter_grad(du_work, dw)
        if matched == dy.size:
            _sum_threads(db_work, db)
            return dx, dw, db
        # not routed here, or an argmax naming units outside their windows: the two functions
    if mask is not None:
        dy = relu_backward(dy, mask)
    dz = max_pool2d_backward(dy, a, conv_shape)
    return conv2d_backward(dz, x, w, s, pads, d, groups, need_dx, out=(dx, dw, db),
                           workspace=workspace)

# ---------------------------------------------------------------------------------
# Transposed convolution: the data gradient of a convolution, used as a layer
# ---------------------------------------------------------------------------------
#: The stride > 1 route of conv2d_transpose unfolds at most this many bytes of columns
#: at a time (or one image per thread, when an image needs more).
TRANSPOSE_CHUNK_BYTES = 1 << 24


def normalize_transpose_padding(padding: _Padding, kernel_size: _IntOrPair,
                                stride: _IntOrPair = 1, dilation: _IntOrPair = 1,
                                output_padding: _IntOrPair | None = None,
                                ) -> tuple[_Pads, tuple[int, int]]:
    """Explicit padding and output padding of a transposed convolution.

    A transposed convolution with explicit padding ``((top, bottom), (left, right))`` is
    the adjoint (the data gradient) of the convolution with the same kernel, stride,
    dilation and padding, taken on an input of the transposed convolution's output size;
    ``output_padding`` adds rows/columns at the bottom/right of the output (PyTorch's
    ``ConvTranspose2d``). Output height:
    ``(H - 1) * stride - top - bottom + dilation * (KH - 1) + output_padding + 1``.

    Parameters
    ----------
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Numbers as PyTorch's ``padding``: rows and columns removed from each side of
        the full output. The strings follow Keras's ``Conv2DTranspose``: without
        ``output_padding``, ``"same"`` gives ``H * stride`` rows and ``"valid"``
        ``(H - 1) * stride + max(extent, stride)`` (``extent = dilation * (KH - 1) + 1``);
        with it, Keras's ``(H - 1) * stride + extent % 2 + output_padding`` and
        ``(H - 1) * stride + extent + output_padding``. ``"same"`` splits its padding as
        TensorFlow does (the odd row at the bottom/right).
    kernel_size, stride, dilation : int or pair
    output_padding : int, pair or None
        None: 0 for numeric padding, Keras's default for the strings. The resulting
        output padding must be smaller than the stride or the dilation (PyTorch's rule).

    Returns
    -------
    pads : ((top, bottom), (left, right))
    output_padding : (oph, opw)
    """
    k = normalize_pair(kernel_size, "kernel_size")
    s = normalize_pair(stride, "stride")
    d = normalize_pair(dilation, "dilation")
    op = None if output_padding is None else normalize_pair(output_padding, "output_padding",
                                                            minimum=0)
    if isinstance(padding, str) and padding.lower() in ("valid", "same"):
        same = padding.lower() == "same"
        pads, final = [], []
        for i in range(2):
            eff = d[i] * (k[i] - 1) + 1
            if op is None:
                total = max(eff - s[i], 0) if same else 0
                final.append(max(s[i] - eff, 0))
            elif same:
                # Keras's size (H - 1) * s + eff % 2 + op, padded by TensorFlow's rule
                total = max(eff - eff % 2 - op[i], 0)
                final.append(eff % 2 + op[i] + total - eff)
            else:
                total = 0
                final.append(op[i])
            pads.append((total // 2, total - total // 2))
        pads, op = tuple(pads), tuple(final)
    else:
        pads = normalize_padding(padding, k, d, s)
        op = (0, 0) if op is None else op
    if op[0] >= max(s[0], d[0]) or op[1] >= max(s[1], d[1]):
        raise ValueError(f"output_padding must be smaller than the stride or the dilation, got "
                         f"{op} with stride {s} and dilation {d} (padding {padding!r})")
    return pads, op  # type: ignore[return-value]


def conv_transpose_output_size(size: int, kernel: int, stride: int = 1, pad_before: int = 0,
                               pad_after: int = 0, output_padding: int = 0,
                               dilation: int = 1) -> int:
    """``(size - 1) * stride - pad_before - pad_after + dilation * (kernel - 1)
    + output_padding + 1``, the output size of a transposed convolution (may be below 1).

    Raises ValueError for a negative size, padding or output padding and a kernel, stride
    or dilation below 1.
    """
    a = _size_args(size=size, kernel=kernel, stride=stride, pad_before=pad_before,
                   pad_after=pad_after, output_padding=output_padding, dilation=dilation)
    return ((a["size"] - 1) * a["stride"] - a["pad_before"] - a["pad_after"]
            + a["dilation"] * (a["kernel"] - 1) + a["output_padding"] + 1)


def _check_conv_transpose(x, w, stride, padding, output_padding, dilation, groups):
    """Every check of a transposed convolution, on the shapes, before any copy.

    Returns the contiguous x and w and the geometry: the output size (OH, OW), and the
    convolution whose data gradient this is: an input of (HC, WC) rows and columns with
    explicit pads `core`. HC < OH when the output padding exceeds the bottom padding: the
    last OH - HC rows are then reached by no kernel tap (they hold the bias only); HC < 1
    when the top padding removes every row a tap reaches.
    """
    x, w, groups = _conv_operands(x, w, groups, " (KH, KW, C_out/groups, C_in)")
    KH, KW, og, cin = w.shape
    C = x.shape[3]
    if cin != C:
        raise ValueError(f"channel mismatch: x has {C} channels (shape {x.shape}) but w of shape "
                         f"{w.shape} (KH, KW, C_out/groups, C_in) expects C_in = {cin}")
    if C % groups:
        raise ValueError(f"C_in ({C}, from x of shape {x.shape}) must be divisible by "
                         f"groups={groups}")
    k = (KH, KW)
    s = normalize_pair(stride, "stride")
    d = normalize_pair(dilation, "dilation")
    pads, op = normalize_transpose_padding(padding, k, s, d, output_padding)
    out, core_hw, core = [], [], []
    for i, axis in enumerate(("height", "width")):
        size = conv_transpose_output_size(x.shape[1 + i], k[i], s[i], pads[i][0], pads[i][1],
                                          op[i], d[i])
        # Rows past the last tap (output padding beyond the bottom pad) are no part of the
        # convolution whose gradient this is.
        extra = max(op[i] - pads[i][1], 0)
        if size < 1:
            raise ValueError(
                f"the padding {pads[i]} removes every {axis} position of the output: x of "
                f"shape {x.shape}, kernel {k}, stride {s}, dilation {d}, output_padding {op} "
                f"give an output {axis} of {size}")
        out.append(size)
        core_hw.append(size - extra)
        core.append((pads[i][0], max(pads[i][1] - op[i], 0)))
    if max(KH * KW * og, og * groups, C) > _INT_MAX:
        raise ValueError(f"w of shape {w.shape} is too large for 32-bit BLAS dimensions")
    return (np.ascontiguousarray(x), np.ascontiguousarray(w), groups, k, s, d, pads, op,
            tuple(out), tuple(core_hw), tuple(core))


def _flipped_kernel(w, groups):
    """The kernel of the stride-1 identity ``conv_transpose(x, w) = conv(x, w')``: w rotated
    by 180 degrees with its two channel axes swapped in every group, HWIO
    ``(KH, KW, C_in/groups, C_out)``."""
    KH, KW, og, cin = w.shape
    wf = w[::-1, ::-1].reshape(KH, KW, og, groups, cin // groups)
    return np.ascontiguousarray(wf.transpose(0, 1, 4, 3, 2).reshape(KH, KW, cin // groups,
                                                                     groups * og))


def conv2d_transpose(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None,
                     stride: _IntOrPair = 1, padding: _Padding = 0,
                     output_padding: _IntOrPair | None = None, dilation: _IntOrPair = 1,
                     groups: int = 1, *, out: NDArray[Any] | None = None,
                     workspace: Workspace | None = None) -> _FloatArray:
    """Transposed convolution ("deconvolution"): the data gradient of :func:`conv2d`.

    ``y = conv2d_transpose(x, w)`` is the gradient with respect to the input of
    ``sum(conv2d(y', w) * x)``: each input pixel scatters ``x[n, i, j, :] @ w[m, k].T``
    onto output pixel ``(i*sh + m*dh - top, j*sw + k*dw - left)``. Semantics of
    PyTorch's ``conv_transpose2d`` (and, for "valid"/"same", Keras's Conv2DTranspose).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C_in), dtype float32 or float64
    w : ndarray of shape (KH, KW, C_out // groups, C_in), same dtype
        The kernel of the convolution whose gradient this is, in cconv's HWIO layout: the
        same layout as Keras's Conv2DTranspose kernel. PyTorch's ConvTranspose2d weight
        ``(C_in, C_out // groups, KH, KW)`` is ``w.transpose(3, 2, 0, 1)``.
    b : ndarray of shape (C_out,) or None
    stride, dilation : int or pair
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
        See :func:`normalize_transpose_padding`.
    output_padding : int, pair or None
        Extra rows/columns at the bottom/right (see :func:`normalize_transpose_padding`).
    groups : int
        Input and output channels split into independent groups (as PyTorch's).
    out : ndarray of shape (N, OH, OW, C_out) or None
        Where to write the result (see the module docstring).
    workspace : Workspace or None
        Scratch memory to reuse from call to call (see :class:`Workspace`): the
        convolution's scratch with stride 1, else the columns ``x W^T``.

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C_out), dtype of x;
        ``OH = (H - 1) * sh - top - bottom + dh * (KH - 1) + output_padding + 1``.

    Notes
    -----
    Stride 1 (the padding at most the dilated kernel extent - 1): the identity of the
    theory, "the data gradient is the full convolution with the kernel rotated by 180
    degrees": a :func:`conv2d` with that kernel (channel axes swapped) and the
    complementary padding, so every forward route applies (Winograd for 3x3 with at least
    ``WINOGRAD_MIN_CHANNELS`` input channels, the direct kernel, im2col + GEMM).
    Otherwise the data-gradient route of conv2d_backward: ``cols = x W^T`` (BLAS on
    cconv's threads) then col2im (parallel over images), on chunks of images whose
    columns take at most ``TRANSPOSE_CHUNK_BYTES`` (or one image per thread).
    """
    x, w, groups, k, s, d, pads, op, (OH, OW), (HC, WC), core = _check_conv_transpose(
        x, w, stride, padding, output_padding, dilation, groups)
    N, H, W, C = x.shape
    og = w.shape[2]
    cout = og * groups
    b = _check_bias(b, x, w, cout)
    _check_workspace(workspace)
    flip_pads = [(d[i] * (k[i] - 1) - pads[i][0], d[i] * (k[i] - 1) - pads[i][1] + op[i])
                 for i in range(2)]
    if s == (1, 1) and min(min(p) for p in flip_pads) >= 0:
        return conv2d(x, _flipped_kernel(w, groups), b, 1, tuple(flip_pads), d, groups,
                      out=out, workspace=workspace)
    full = _output(out, "out", (N, OH, OW, cout), x.dtype, (x, w, b))
    if min(HC, WC) < 1 or N == 0:                         # no tap reaches the output
        return _bias_filled(full, b)
    kg = k[0] * k[1] * og
    row_bytes = k[0] * k[1] * cout * x.itemsize          # columns of one input pixel
    nt = get_num_threads()
    chunk = min(N, max(min(N, nt), TRANSPOSE_CHUNK_BYTES // max(1, H * W * row_bytes)))
    shapes = [(chunk * H * W, k[0] * k[1] * cout)]       # the columns of a chunk
    if groups > 1:
        shapes.append((chunk * H * W, kg))                # one group's columns
    if (HC, WC) != (OH, OW):
        shapes.append((N, HC, WC, cout))                  # the rows and columns taps reach
    scratch = _scratch(workspace, x.dtype, *shapes)
    y = scratch[-1] if (HC, WC) != (OH, OW) else full
    _bias_filled(y, b)                                    # col2im adds onto it
    wmat = w.reshape(kg, C)
    cg = C // groups
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        xs = x[n0:n1].reshape(-1, C)
        cols = scratch[0][:xs.shape[0]]                   # (m, KH*KW*C_out)
        if groups == 1:
            matmul(xs, wmat, trans_b=True, out=cols)
        else:
            view = cols.reshape(xs.shape[0], k[0] * k[1], cout)
            part = scratch[1][:xs.shape[0]]
            for gi in range(groups):
                matmul(xs[:, gi * cg:(gi + 1) * cg], wmat[:, gi * cg:(gi + 1) * cg],
                       trans_b=True, out=part)
                view[:, :, gi * og:(gi + 1) * og] = part.reshape(-1, k[0] * k[1], og)
        _core.col2im(cols, y[n0:n1], k[0], k[1], H, W, s[0], s[1], core[0][0], core[1][0],
                     d[0], d[1], _threads(n1 - n0, cols.size))
    if y is not full:
        _bias_filled(full, b)
        full[:, :HC, :WC] = y
    return full


def _bias_filled(y, b):
    """``y`` (NHWC) holding the bias b (or zeros) at every pixel."""
    y[...] = 0 if b is None else b
    return y


def conv2d_transpose_backward(dy: ArrayLike, x: ArrayLike, w: ArrayLike,
                              stride: _IntOrPair = 1, padding: _Padding = 0,
                              output_padding: _IntOrPair | None = None,
                              dilation: _IntOrPair = 1, groups: int = 1, need_dx: bool = True,
                              *,
                              out: tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any]]
                              | None = None, workspace: Workspace | None = None,
                              ) -> tuple[_FloatArray | None, _FloatArray, _FloatArray]:
    """Gradients of :func:`conv2d_transpose` with respect to its input, weights and bias.

    The roles of the convolution swap: ``dx`` is the forward convolution
    ``conv2d(dy, w)`` (with the same stride, padding, dilation and groups), ``dw`` is the
    convolution's weight gradient with ``dy`` as its input and ``x`` as its output
    gradient, and ``db`` is ``dy`` summed over N, OH, OW. Both go through :func:`conv2d`
    and :func:`conv2d_backward`, so their routes (Winograd, direct, im2col) apply.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, C_out)
        Gradient of the loss with respect to the output of ``conv2d_transpose(x, w, ...)``.
    x, w, stride, padding, output_padding, dilation, groups
        As given to :func:`conv2d_transpose`.
    need_dx : bool
        When False, ``dx`` is not computed and None is returned in its place.
    out : tuple (dx, dw, db) or None
        Where to write the results (see the module docstring); ``dx`` is None when
        ``need_dx`` is False.
    workspace : Workspace or None
        Scratch memory to reuse from call to call (see :class:`Workspace`).

    Returns
    -------
    dx : ndarray of x's shape, or None
    dw : ndarray of w's shape
    db : ndarray of shape (C_out,)
    """
    x, w, groups, k, s, d, pads, op, (OH, OW), (HC, WC), core = _check_conv_transpose(
        x, w, stride, padding, output_padding, dilation, groups)
    dy = _float_array(dy, "dy", 4, contiguous=False)
    _same_dtype(x=x, dy=dy)
    cout = w.shape[2] * groups
    expected = (x.shape[0], OH, OW, cout)
    if dy.shape != expected:
        raise ValueError(f"dy must have the output shape (N, OH, OW, C_out) = {expected} for x "
                         f"of shape {x.shape} and w of shape {w.shape}, got {dy.shape}")
    _check_workspace(workspace)
    dx, dw, db = _gradient_outputs(out, need_dx, dy, x, w, cout)
    np.sum(dy, axis=(0, 1, 2), out=db)
    if min(HC, WC) < 1:                                   # the output holds the bias only
        if need_dx:
            dx[...] = 0
        dw[...] = 0
        return dx, dw, db
    # The rows and columns of the output padding that no tap reaches take no part.
    dyc = np.ascontiguousarray(dy[:, :HC, :WC])
    if need_dx:
        conv2d(dyc, w, None, s, core, d, groups, out=dx, workspace=workspace)
    conv2d_backward(x, dyc, w, s, core, d, groups, need_dx=False,
                    out=(None, dw, _alloc((x.shape[3],), x.dtype)), workspace=workspace)
    return dx, dw, db


# ---------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------
def _pool_geometry(shape, pool_size, stride, padding):
    _positive_dims(shape, "x")
    k = normalize_pair(pool_size, "pool_size")
    stride = k if stride is None else stride
    k, s, pads, _, out = _geometry(shape, k, stride, padding, 1, what="pool window")
    for i, axis in enumerate(("height", "width")):
        if max(pads[i]) >= k[i]:
            raise ValueError(f"padding {pads[i]} in {axis} must be smaller than pool_size {k} "
                             f"(a window would lie entirely in the padding)")
    return k, s, pads, out


def max_pool2d(x: ArrayLike, pool_size: _IntOrPair = 2, stride: _IntOrPair | None = None,
               padding: _Padding = 0, *,
               out: tuple[NDArray[Any], NDArray[Any]] | None = None,
               ) -> tuple[_FloatArray, NDArray[np.signedinteger[Any]]]:
    """Max pooling that records the winner of every window.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), dtype float32 or float64
    pool_size : int or pair
    stride : int, pair or None
        Defaults to ``pool_size``.
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
        Padded positions never win (they act as -inf). Every pad must be smaller than
        the window.
    out : tuple (y, argmax) or None
        Where to write the results (see the module docstring); ``argmax`` may be int32
        (when H * W < 2**31) or int64.

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C)
    argmax : ndarray of int32 (int64 when H * W >= 2**31), shape (N, OH, OW, C)
        Flat index ``h * W + w`` of the winning input unit inside its ``(n, c)`` plane.
        (int32 rather than PyTorch's int64: it halves the index traffic of both passes.)
        Ties go to the first element of the window in row-major order; a NaN in the
        window wins (NaN propagates, as in PyTorch), the last one if there are several.
    """
    r = _core.max_pool2d_fast(x, (pool_size, stride, padding), out, _GEOMETRIES, _pool_geometry,
                              MIN_WORK_PER_THREAD, _CACHED_MIN_BYTES, _STREAM_MIN_BYTES)
    if r is not None:                # the common case, done in C (see _core.max_pool2d_fast)
        return r
    x = _float_array(x, "x", 4)
    k, s, pads, (OH, OW) = _memo(_pool_geometry, (x.shape,), pool_size, stride, padding)
    N, H, W, C = x.shape
    shape = (N, OH, OW, C)
    index = _INT32 if H * W <= _INT32_MAX else _INT64
    if out is None:
        y, argmax = _alloc(shape, x.dtype), _alloc(shape, index)
    else:
        out_y, out_arg = _outputs(out, ("y", "argmax"), 2)
        if index is _INT32 and getattr(out_arg, "dtype", None) == _INT64:
            index = _INT64                # int64 indices asked for: the kernel writes those too
        y = _output(out_y, "out[0]", shape, x.dtype, (x,))
        argmax = _output(out_arg, "out[1]", shape, index, (x,))
    _core.max_pool2d_forward(x, y, argmax, k[0], k[1], s[0], s[1], pads[0][0], pads[1][0],
                             _threads(N * OH, x.size),
                             y.nbytes + argmax.nbytes >= _STREAM_MIN_BYTES)
    return y, argmax


def _argmax_dtype(shape):
    return _INT32 if shape[1] * shape[2] <= _INT32_MAX else _INT64


def _check_pool_grad(dy, input_shape):
    dy = _float_array(dy, "dy", 4)
    shape = _shape_arg(input_shape, "input_shape")
    if dy.shape[0] != shape[0] or dy.shape[3] != shape[3]:
        raise ValueError(f"dy of shape {dy.shape} does not match input_shape {shape}: "
                         f"N and C must agree")
    return dy, shape


def max_pool2d_backward(dy: ArrayLike, argmax: ArrayLike, input_shape: Sequence[int], *,
                        out: NDArray[Any] | None = None) -> _FloatArray:
    """Route each gradient of ``dy`` to the unit that won its window in the forward pass.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, C), dtype float32 or float64
    argmax : ndarray of integers, shape (N, OH, OW, C)
        As returned by :func:`max_pool2d` (int32 and int64 are used as they are, other
        integer dtypes are converted); every value must lie in ``[0, H*W)``.
    input_shape : tuple (N, H, W, C)
    out : ndarray of shape input_shape or None
        Where to write the result (see the module docstring).

    Returns
    -------
    dx : ndarray of shape input_shape, dtype of dy
    """
    dy, shape = _check_pool_grad(dy, input_shape)
    a = argmax
    if type(a) is not np.ndarray or a.dtype not in _INDICES or not a.flags.c_contiguous:
        a = np.asarray(argmax)
        if a.dtype.kind not in "iu":
            raise TypeError(f"argmax must be an integer array (int32 or int64), got dtype "
                            f"{a.dtype} (shape {a.shape})")
        if a.dtype not in _INDICES:
            if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
                raise ValueError("argmax holds indices outside [0, H*W)")
            a = a.astype(np.int64)
        a = np.ascontiguousarray(a)
    if a.shape != dy.shape:
        raise ValueError(f"argmax must have dy's shape {dy.shape}, got {a.shape}")
    dx = _output(out, "out", shape, dy.dtype, (dy, a))    # every element written by the kernel
    try:
        _core.max_pool2d_backward(dy, a, dx, dx.nbytes >= _STREAM_MIN_BYTES,
                                  _threads(shape[0], dx.size))
    except ValueError:
        raise ValueError(f"argmax holds indices outside [0, H*W) = [0, {shape[1] * shape[2]}) "
                         f"for input_shape {shape}") from None
    return dx



def avg_pool2d(x: ArrayLike, pool_size: _IntOrPair = 2, stride: _IntOrPair | None = None,
               padding: _Padding = 0, *, out: NDArray[Any] | None = None) -> _FloatArray:
    """Average pooling.

    Padded zeros count in the divisor: every window is divided by ``KH * KW`` (PyTorch's
    default, ``count_include_pad=True``).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), dtype float32 or float64
    pool_size : int or pair
    stride : int, pair or None (defaults to pool_size)
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
    out : ndarray of shape (N, OH, OW, C) or None
        Where to write the result (see the module docstring).

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C)
    """
    x = _float_array(x, "x", 4)
    k, s, pads, (OH, OW) = _memo(_pool_geometry, (x.shape,), pool_size, stride, padding)
    N, _, _, C = x.shape
    y = _output(out, "out", (N, OH, OW, C), x.dtype, (x,))
    _core.avg_pool2d_forward(x, y, k[0], k[1], s[0], s[1], pads[0][0], pads[1][0],
                             _threads(N * OH, x.size))
    return y


def avg_pool2d_backward(dy: ArrayLike, input_shape: Sequence[int], pool_size: _IntOrPair = 2,
                        stride: _IntOrPair | None = None, padding: _Padding = 0, *,
                        out: NDArray[Any] | None = None) -> _FloatArray:
    """Gradient of :func:`avg_pool2d`: each ``dy`` spread evenly (``/ (KH*KW)``) over its window.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, C), dtype float32 or float64
    input_shape : tuple (N, H, W, C)
    pool_size, stride, padding : as given to :func:`avg_pool2d`
    out : ndarray of shape input_shape or None
        Where to write the result (see the module docstring).

    Returns
    -------
    dx : ndarray of shape input_shape
    """
    dy, shape = _check_pool_grad(dy, input_shape)
    k, s, pads, (OH, OW) = _memo(_pool_geometry, (shape,), pool_size, stride, padding)
    expected = (shape[0], OH, OW, shape[3])
    if dy.shape != expected:
        raise ValueError(f"dy must have the pooled shape {expected} for input_shape {shape}, "
                         f"got {dy.shape}")
    dx = _output(out, "out", shape, dy.dtype, (dy,))      # every element written by the kernel
    _core.avg_pool2d_backward(dy, dx, k[0], k[1], s[0], s[1], pads[0][0], pads[1][0],
                              _threads(shape[0], dx.size))
    return dx


# ---------------------------------------------------------------------------------
# One image, one kernel: the two operations the theory distinguishes
# ---------------------------------------------------------------------------------
def _mode_padding(mode, kh, kw, flipped=False):
    if mode == "valid":
        return ((0, 0), (0, 0))
    if mode == "full":
        return ((kh - 1, kh - 1), (kw - 1, kw - 1))
    if mode == "same":
        # The 'full' output cropped to the input's size, centred as scipy.signal does: for an
        # even kernel the extra row/column of padding goes after the image when correlating
        # and before it when convolving (the flipped kernel mirrors the crop).
        ph, pw = ((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)
        if flipped:
            ph, pw = ph[::-1], pw[::-1]
        return (ph, pw)
    raise ValueError(f"mode must be 'valid', 'same' or 'full', got {mode!r}")


def correlate2d(image: ArrayLike, kernel: ArrayLike, mode: str = "valid", *,
                out: NDArray[Any] | None = None) -> _FloatArray:
    """Cross-correlation of one 2-D image with one 2-D kernel (the CNN "convolution").

    ``out[i, j] = sum_{m, n} image[i + m, j + n] * kernel[m, n]``

    Parameters
    ----------
    image : ndarray of shape (H, W), dtype float32 or float64
    kernel : ndarray of shape (KH, KW), same dtype
    mode : {"valid", "same", "full"}
        ``valid``: only where the kernel fits inside the image; ``full``: every overlap
        (zero padding of KH-1, KW-1); ``same``: the full result cropped, centred, to the
        image's size (as ``scipy.signal.correlate2d``).
    out : ndarray of shape (OH, OW) or None
        Where to write the result (see the module docstring).
    """
    return _correlate2d(image, kernel, mode, False, out)


def _correlate2d(image, kernel, mode, flipped, out):
    image = _float_array(image, "image", 2)
    kernel = _float_array(kernel, "kernel", 2)
    _same_dtype(image=image, kernel=kernel)
    _positive_dims(image.shape, "image", skip_batch=False)
    _positive_dims(kernel.shape, "kernel", skip_batch=False)
    if flipped:
        kernel = np.ascontiguousarray(kernel[::-1, ::-1])
    kh, kw = kernel.shape
    pads = _mode_padding(mode, kh, kw, flipped)
    shape = tuple(image.shape[i] + sum(pads[i]) - kernel.shape[i] + 1 for i in range(2))
    if out is not None and min(shape) >= 1:        # (else conv2d says what is wrong)
        out = _output(out, "out", shape, image.dtype, (image, kernel))
        conv2d(image[None, :, :, None], kernel[:, :, None, None], padding=pads,
               out=out[None, :, :, None])
        return out
    y = conv2d(image[None, :, :, None], kernel[:, :, None, None], padding=pads)
    return y[0, :, :, 0]


def convolve2d(image: ArrayLike, kernel: ArrayLike, mode: str = "valid", *,
               out: NDArray[Any] | None = None) -> _FloatArray:
    """True 2-D convolution: cross-correlation with the kernel flipped both ways.

    ``out[i, j] = sum_{m, n} image[i - m, j - n] * kernel[m, n]``; modes and ``out`` as in
    :func:`correlate2d` (``same`` centred as ``scipy.signal.convolve2d``).
    """
    return _correlate2d(image, kernel, mode, True, out)


# ---------------------------------------------------------------------------------
# Elementwise helpers used by the layers
# ---------------------------------------------------------------------------------
def relu(x: ArrayLike, *, out: NDArray[Any] | None = None) -> _FloatArray:
    """ReLU, ``max(x, 0)`` exactly as ``numpy.maximum(x, 0)`` (``+0`` for ``x <= 0``, a NaN
    kept), in one compiled pass on cconv's threads.

    Parameters
    ----------
    x : ndarray, dtype float32 or float64
    out : ndarray of x's shape or None
        Where to write the result (see the module docstring); ``x`` itself (in place) too.
    """
    x = _float_array(x, "x")
    if out is x:
        result = x
    else:
        result = _output(out, "out", x.shape, x.dtype, (x,))
    _core.relu_forward(x.reshape(-1), result.reshape(-1), _threads(x.size, x.size))
    return result


def relu_backward(dy: ArrayLike, y: ArrayLike, *, out: NDArray[Any] | None = None) -> _FloatArray:
    """Gradient of ReLU from its output: ``dy`` where ``y > 0``, else 0, in one pass.

    Parameters
    ----------
    dy : ndarray, dtype float32 or float64
        Gradient with respect to the ReLU's output.
    y : ndarray of dy's shape and dtype
        The ReLU's output (``max(x, 0)``).
    out : ndarray of dy's shape or None
        Where to write the result (see the module docstring); ``dy`` itself (in place) too.
    """
    dy = _float_array(dy, "dy")
    y = _float_array(y, "y")
    _same_dtype(dy=dy, y=y)
    if dy.shape != y.shape:
        raise ValueError(f"dy and y must have the same shape, got {dy.shape} and {y.shape}")
    if out is dy:                   # elementwise: each element read before it is written
        result = _output(out, "out", dy.shape, dy.dtype, (y,))
    else:
        result = _output(out, "out", dy.shape, dy.dtype, (dy, y))
    _core.relu_backward(dy.reshape(-1), y.reshape(-1), result.reshape(-1),
                        _threads(dy.size, dy.size))
    return result


def adam_update(params: Sequence[NDArray[Any]], grads: Sequence[NDArray[Any]],
                ms: Sequence[NDArray[Any]], vs: Sequence[NDArray[Any]], step: int, lr: float,
                beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 0.0, decoupled: bool = False) -> None:
    """One Adam / AdamW step of many parameters in one compiled pass, in place: the
    arithmetic of :func:`cconv.optim.adam_update` (PyTorch's ``torch.optim.Adam`` /
    ``AdamW``), each element read and written once, blocks of the parameters on cconv's
    threads.

    Parameters
    ----------
    params, ms, vs : sequences of ndarray  # IN/OUT
        The parameters and their first and second moment estimates.
    grads : sequence of ndarray  # IN (not modified)
    step : int
        ``t``, counted from 1.
    lr, beta1, beta2, eps, weight_decay, decoupled
        As :func:`cconv.optim.adam_update`.

    Every array C-contiguous and of one float dtype; a parameter and its gradient and
    moments of one size, not sharing memory (else ``TypeError`` / ``ValueError``).
    """
    lists = []
    for name, seq in (("params", params), ("grads", grads), ("ms", ms), ("vs", vs)):
        if isinstance(seq, np.ndarray) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple of arrays, got {type(seq).__name__}")
        lists.append(list(seq))
    params, grads, ms, vs = lists
    step = _as_int(step, "step", "an int >= 1")
    if step < 1:
        raise ValueError(f"step must be an int >= 1, got {step}")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1} and {beta2}")
    total = sum(p.size for p in params if isinstance(p, np.ndarray))
    mode = 0 if not weight_decay else (1 if decoupled else 2)
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    _core.adam_update(params, grads, ms, vs, mode, 1.0 - lr * weight_decay, weight_decay,
                      beta1, beta2, math.sqrt(bc2), eps, lr / bc1,
                      _threads(-(-total // MIN_WORK_PER_THREAD), total))


# ---------------------------------------------------------------------------------
# Resampling, padding and cropping (memory-bound: numpy)
# ---------------------------------------------------------------------------------
_INTERPOLATIONS = ("nearest", "bilinear")


def normalize_pads(value: _IntOrPair | Sequence[Sequence[int]], name: str = "padding") -> _Pads:
    """Keras's forms of a padding or cropping argument as ``((top, bottom), (left, right))``.

    Parameters
    ----------
    value : int, (h, w) or ((top, bottom), (left, right))
        An int applies to all four sides, ``(h, w)`` to top and bottom / left and right.
    name : str
        The argument's name, for the error messages.
    """
    what = "a non-negative int, a pair (h, w) or ((top, bottom), (left, right))"
    if isinstance(value, (tuple, list)) and any(isinstance(v, (tuple, list)) for v in value):
        if len(value) != 2 or not all(isinstance(v, (tuple, list)) for v in value):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return tuple(normalize_pair(tuple(v), name, minimum=0) for v in value)  # type: ignore
    h, w = normalize_pair(value, name, minimum=0)
    return ((h, h), (w, w))


def zero_pad2d(x: ArrayLike, padding: _IntOrPair | Sequence[Sequence[int]] = 1, *,
               out: NDArray[Any] | None = None) -> _FloatArray:
    """Zeros around the height and width of ``x`` (Keras's ZeroPadding2D).

    The adjoint of :func:`crop2d`: the gradient of ``zero_pad2d(x, p)`` is
    ``crop2d(dy, p)``, and the other way round.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), dtype float32 or float64
    padding : int, (h, w) or ((top, bottom), (left, right))
    out : ndarray of shape (N, top + H + bottom, left + W + right, C) or None
        Where to write the result (see the module docstring).

    Returns
    -------
    y : ndarray of shape (N, top + H + bottom, left + W + right, C)
    """
    (t, b), (l, r) = normalize_pads(padding, "padding")
    x = _float_array(x, "x", 4, contiguous=False)
    N, H, W, C = x.shape
    shape = (N, t + H + b, l + W + r, C)
    if out is None:
        y = _alloc(shape, x.dtype, zero=True)
    else:
        y = _output(out, "out", shape, x.dtype, (x,))
        y[:, :t] = y[:, t + H:] = y[:, t:t + H, :l] = y[:, t:t + H, l + W:] = 0
    y[:, t:t + H, l:l + W] = x
    return y


def crop2d(x: ArrayLike, cropping: _IntOrPair | Sequence[Sequence[int]] = 0, *,
           out: NDArray[Any] | None = None) -> _FloatArray:
    """Remove rows and columns at the edges of ``x`` (Keras's Cropping2D).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), dtype float32 or float64
    cropping : int, (h, w) or ((top, bottom), (left, right))
        Must leave at least one row and one column.
    out : ndarray of shape (N, H - top - bottom, W - left - right, C) or None
        Where to write the result (see the module docstring).

    Returns
    -------
    y : ndarray of shape (N, H - top - bottom, W - left - right, C), a new array (or out)
    """
    (t, b), (l, r) = normalize_pads(cropping, "cropping")
    x = _float_array(x, "x", 4, contiguous=False)
    N, H, W, C = x.shape
    if t + b >= H or l + r >= W:
        raise ValueError(f"cropping {((t, b), (l, r))} must leave at least one row and column "
                         f"of x of shape {x.shape}")
    if out is None:
        return np.ascontiguousarray(x[:, t:H - b, l:W - r])
    y = _output(out, "out", (N, H - t - b, W - l - r, C), x.dtype, (x,))
    y[...] = x[:, t:H - b, l:W - r]
    return y


def _check_interpolation(interpolation):
    if not isinstance(interpolation, str) or interpolation.lower() not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation.lower()


def _phases(scale):
    """Output pixel ``o = scale * i + r`` of linear upsampling (half-pixel centres, as
    :func:`upsample2d` documents) samples the input at ``i + f_r`` with
    ``f_r = (2r + 1 - scale) / (2 scale)`` (half-pixel centres; |f_r| < 1/2): between pixels
    i and i + 1 when f_r >= 0, i - 1 and i otherwise. Yields (r, f_r)."""
    for r in range(scale):
        yield r, (2 * r + 1 - scale) / (2 * scale)


def _at(axis, index):
    """An index tuple selecting ``index`` (an int or a slice) along ``axis``."""
    return (slice(None),) * axis + (index,)


def _upsample_linear(x, axis, scale, out=None):
    """Linear upsampling along one axis: two gathers (faster than writing the phases into
    strided views), the sampling position clamped to the image; into ``out`` if given."""
    n = x.shape[axis]
    src = np.maximum((np.arange(n * scale) + 0.5) / scale - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.intp), n - 1)
    w1 = (src - i0).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = n * scale
    y = np.take(x, i0, axis=axis, out=out)
    y *= (1 - w1).reshape(shape)
    y += np.take(x, np.minimum(i0 + 1, n - 1), axis=axis) * w1.reshape(shape)
    return y


def _upsample_linear_adjoint(dy, axis, scale, n, out=None):
    """The adjoint of _upsample_linear, phase by phase (strided reads of dy, slices of dx;
    5x faster than segment sums over the gather indices: median of 9 alternating calls on
    (32, 64, 64, 32) float32): each phase's gradient goes back to its two taps, the edge
    pixels taking the share of the taps past the border. Into ``out`` if given."""
    shape = list(dy.shape)
    phases = dy.reshape(shape[:axis] + [n, scale] + shape[axis + 1:])
    shape[axis] = n
    if out is None:
        dx = np.zeros(shape, dy.dtype)
    else:
        dx = out
        dx[...] = 0
    t = dy.dtype.type
    first, last = _at(axis, slice(0, 1)), _at(axis, slice(n - 1, None))
    for r, f in _phases(scale):
        g = phases[_at(axis + 1, r)]
        dx += g * t(1 - abs(f))
        if f > 0:     # the share of x[i + 1]; the last pixel takes its own
            g = g * t(f)
            dx[_at(axis, slice(1, None))] += g[_at(axis, slice(None, n - 1))]
            dx[last] += g[last]
        elif f < 0:   # the share of x[i - 1]; the first pixel takes its own
            g = g * t(-f)
            dx[_at(axis, slice(None, n - 1))] += g[_at(axis, slice(1, None))]
            dx[first] += g[first]
    return dx


def upsample2d(x: ArrayLike, size: _IntOrPair = 2, interpolation: str = "nearest", *,
               out: NDArray[Any] | None = None) -> _FloatArray:
    """Upsample height and width by integer factors (Keras's UpSampling2D).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), dtype float32 or float64
    size : int or (sh, sw)
    interpolation : {"nearest", "bilinear"}
        ``"nearest"`` repeats every pixel ``sh x sw`` times. ``"bilinear"`` uses
        half-pixel centres, output ``o`` sampling the input at ``(o + 0.5) / s - 0.5``
        clamped to the image: PyTorch's ``interpolate(mode="bilinear",
        align_corners=False)`` and Keras's (TensorFlow's) bilinear ``UpSampling2D``.
    out : ndarray of shape (N, H * sh, W * sw, C) or None
        Where to write the result (see the module docstring; "bilinear" still allocates
        its intermediate, the input upsampled in height).

    Returns
    -------
    y : ndarray of shape (N, H * sh, W * sw, C)
    """
    sh, sw = normalize_pair(size, "size")
    interpolation = _check_interpolation(interpolation)
    x = _float_array(x, "x", 4, contiguous=False)
    _positive_dims(x.shape, "x")
    N, H, W, C = x.shape
    shape = (N, H * sh, W * sw, C)
    if out is not None:
        out = _output(out, "out", shape, x.dtype, (x,))
    if interpolation == "bilinear":
        _check_fits(shape, x.dtype)
        return _upsample_linear(_upsample_linear(x, 1, sh), 2, sw, out)
    y = _alloc(shape, x.dtype) if out is None else out
    y.reshape(N, H, sh, W, sw, C)[...] = x[:, :, None, :, None, :]
    return y


def upsample2d_backward(dy: ArrayLike, size: _IntOrPair = 2,
                        interpolation: str = "nearest", *,
                        out: NDArray[Any] | None = None) -> _FloatArray:
    """Gradient of :func:`upsample2d` with respect to its input.

    Parameters
    ----------
    dy : ndarray of shape (N, H * sh, W * sw, C), dtype float32 or float64
    size, interpolation : as given to :func:`upsample2d`
    out : ndarray of shape (N, H, W, C) or None
        Where to write the result (see the module docstring; "bilinear" still allocates
        its intermediate, the gradient summed in width).

    Returns
    -------
    dx : ndarray of shape (N, H, W, C)
    """
    sh, sw = normalize_pair(size, "size")
    interpolation = _check_interpolation(interpolation)
    dy = _float_array(dy, "dy", 4, contiguous=False)
    _positive_dims(dy.shape, "dy")
    N, OH, OW, C = dy.shape
    if OH % sh or OW % sw:
        raise ValueError(f"dy of shape {dy.shape} is not the output of an upsampling by "
                         f"size {(sh, sw)}: height and width must be multiples of it")
    H, W = OH // sh, OW // sw
    if out is not None:
        out = _output(out, "out", (N, H, W, C), dy.dtype, (dy,))
    if interpolation == "bilinear":
        return _upsample_linear_adjoint(_upsample_linear_adjoint(dy, 2, sw, W), 1, sh, H, out)
    return np.ascontiguousarray(dy).reshape(N, H, sh, W, sw, C).sum(axis=(2, 4), out=out)
