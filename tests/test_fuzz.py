"""Fuzzing the boundary of cconv.functional (issue 6).

Every public function is called with random garbage: wrong ndims, zero-size and huge
dimensions, negative or enormous strides/paddings/sizes, wrong and mismatched dtypes,
non-contiguous, read-only and overlapping views (``as_strided``), NaN/inf, argmax arrays with
out-of-range values. Most calls start from valid arguments and mutate one to three of them,
so they reach the compiled code; the rest is plain garbage.

Allowed outcomes: a result, or ValueError / TypeError / MemoryError. A result is checked:
float32/float64 output in the input's dtype, and, when the arguments are small, equal to the
slow reference of tests/reference.py. Anything else (another exception, a wrong result) fails
the test with the call that caused it.

Every call runs on a random thread count (1-3, below the per-thread work floor, so the
work is really split; a third of them with the smallest im2col tiles and Winograd blocks,
so that small inputs take many of each per thread) and a random kernel route (``cconv._testing.forced``: im2col,
Winograd, direct, depthwise convolution; generic, AVX2, AVX-512 max pool), and more than a
third of the valid calls are shaped for the fast routes (3x3 stride-1 convolutions with
channel counts that are multiples of 8 and 16, float32 first layers with C_out a multiple of
16, depthwise convolutions with channel multipliers 1-3 and dilation up to 2, tiled float32
max pools with C a multiple of 8 or 16, odd sizes). The test checks that every route's
kernels and every thread count were reached.

Runs: by default (CI) a fixed seed and a fixed number of calls, split between an in-process
loop and a loop in a subprocess, which catches hard crashes (a segfault shows as a negative
exit code): the same calls every time. ``CCONV_FUZZ_SEED`` sets another seed ("random"
draws one); ``CCONV_FUZZ_SECONDS`` runs for that long instead, with a newly drawn seed
unless one is set. The seed is printed for reproduction.

    python -m pytest tests/test_fuzz.py                         # CI: seed 2024, fixed calls
    CCONV_FUZZ_SECONDS=600 python -m pytest tests/test_fuzz.py -s   # long run, new seeds
    python tests/test_fuzz.py --seconds 60 --seed 1 --trace      # standalone, one process

Memory: the loop runs under an address-space limit (current usage + 3 GiB) so that a size
that passes validation but does not fit fails as MemoryError instead of swapping the
machine; the limit is restored afterwards.
"""
import argparse
import collections
import contextlib
import os
import subprocess
import sys
import time
import warnings

import numpy as np

try:
    import resource
except ImportError:  # not POSIX
    resource = None

from cconv import _testing
from cconv import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as R  # noqa: E402

#: The seed of CI runs, and their number of calls (in-process, subprocess).
FIXED_SEED = 2024
CALLS = (6000, 2500)

ALLOWED = (ValueError, TypeError, MemoryError)
FUNCTIONS = ["im2col", "col2im", "conv2d", "conv2d_backward", "max_pool2d",
             "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "correlate2d",
             "convolve2d", "relu_backward", "conv2d_transpose", "conv2d_transpose_backward",
             "upsample2d", "upsample2d_backward", "zero_pad2d", "crop2d", "matmul", "relu",
             "conv2d_max_pool2d", "conv2d_max_pool2d_backward"]
#: Functions that return a prepared op (called here with the shape of the first operand,
#: then on the operands): fuzzed as the op they prepare.
PREPARED = {"prepare_conv2d_max_pool2d": "conv2d_max_pool2d", "prepare_matmul": "matmul"}
FUNCTIONS += list(PREPARED)
#: Public functions without arguments to fuzz.
NO_ARGUMENTS = ["route_state"]
HELPERS = ["conv_output_size", "normalize_pair", "normalize_padding",
           "conv_transpose_output_size", "normalize_transpose_padding", "normalize_pads"]
BACKWARDS = ("conv2d_backward", "conv2d_transpose_backward",   # with need_dx
             "conv2d_max_pool2d_backward")
HUGE = [2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]
SMALL = [1, 1, 1, 2, 2, 3, 4]
WEIRD = [0, -1, -2, -2**31, -2**63, 1.5, 2.0, float("nan"), None, "2", True, False, (1,),
         (1, 2, 3), (0, 1), (-1, 2), [2, 2], (2**63, 1), np.int64(2), np.int32(1),
         np.uint64(2**63), np.array(2), np.array([1, 2]), (np.int8(-1), 1), b"\x01", object()]
PADDINGS = ["same", "valid", "SAME", "full", "", ((0, 1), (1, 0)), ((0, 0), (0, 0)),
            ((-1, 0), (0, 0)), ((1, 2, 3), (0, 0)), ((1, 1), 1), (((1, 1),), (0, 0)),
            ((2**31 - 1, 0), (0, 0)), ((0, 2**40), (2**63, 0))]


# ----------------------------------------------------------------------------- garbage

def describe(v):
    if isinstance(v, np.ndarray):
        return (f"array(shape={v.shape}, dtype={v.dtype}, strides={v.strides}, "
                f"contig={v.flags.c_contiguous}, writeable={v.flags.writeable})")
    if isinstance(v, (tuple, list)):
        inner = ", ".join(describe(e) for e in v)
        if isinstance(v, tuple):
            return f"({inner},)" if len(v) == 1 else f"({inner})"
        return f"[{inner}]"
    r = repr(v)
    return r if len(r) < 80 else r[:77] + "..."


def values(rng, shape, dtype):
    """Random values of a numeric dtype, sometimes with NaN/inf/huge/denormal entries."""
    n = int(np.prod(shape))
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype.kind == "c":
        a = rng.standard_normal(n)
        if rng.random() < 0.3 and n:
            k = rng.integers(1, n + 1)
            specials = np.array([np.nan, np.inf, -np.inf, 1e308, -1e308, 1e-310, 0.0, -0.0])
            a[rng.integers(0, n, k)] = rng.choice(specials, k)
        with np.errstate(over="ignore", invalid="ignore"):
            return a.astype(dtype).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True).reshape(shape)
    if dtype.kind == "b":
        return (rng.random(n) < 0.5).reshape(shape)
    return np.full(shape, 1.0, dtype=object)


def relayout(rng, a):
    """The same array in another memory layout, or an overlapping / read-only view."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    r = rng.integers(0, 7)
    if r == 0:
        return np.asfortranarray(a)
    if r == 1:      # every other element of a larger buffer
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
        v = big[tuple(slice(1, None, 2) for _ in a.shape)]
        v[...] = a
        return v
    if r == 2:      # reversed axes
        return a[tuple(slice(None, None, -1) for _ in a.shape)]
    if r == 3:      # read-only
        b = a.copy()
        b.setflags(write=False)
        return b
    if r == 4 and a.size:  # overlapping view: neighbouring rows share memory
        flat = np.ascontiguousarray(a).reshape(-1)
        strides = [flat.itemsize] * a.ndim
        return np.lib.stride_tricks.as_strided(flat, a.shape, strides, writeable=False)
    if r == 5 and a.size:  # broadcast view: one element repeated (stride 0)
        return np.lib.stride_tricks.as_strided(a.reshape(-1)[:1], a.shape, [0] * a.ndim,
                                               writeable=False)
    return a


def garbage_array(rng, ndim=None, dtype=None):
    """An array of random ndim, shape, dtype and layout."""
    if ndim is None:
        ndim = int(rng.choice([0, 1, 2, 3, 4, 4, 4, 5, 6]))
    r = rng.random()
    if r < 0.05 and ndim:   # astronomically large, stride 0: any copy must fail (MemoryError)
        shape = [int(rng.choice([1, 3, 2**20, 2**31, 2**40])) for _ in range(ndim)]
        if np.prod([float(s) for s in shape]) < 2.0**40:
            shape[rng.integers(0, ndim)] = 2**40
        shape = tuple(shape)
        base = np.zeros(1, dtype or np.float64)
        return np.lib.stride_tricks.as_strided(base, shape, [0] * ndim, writeable=False)
    if r < 0.15:    # zero-size
        shape = tuple(int(rng.integers(0, 4)) for _ in range(ndim))
        shape = tuple(0 if i == rng.integers(0, max(ndim, 1)) else s
                      for i, s in enumerate(shape))
    elif r < 0.2 and ndim:  # one long dimension (still a real, small array)
        shape = [int(rng.integers(1, 4)) for _ in range(ndim)]
        shape[rng.integers(0, ndim)] = int(rng.integers(1000, 5000))
        shape = tuple(shape)
    else:
        shape = tuple(int(rng.integers(1, 7)) for _ in range(ndim))
    if int(np.prod(shape)) > 200_000:
        shape = tuple(min(s, 3) for s in shape)
    if dtype is None:
        dtype = rng.choice([np.float32, np.float64, np.float64, np.float32, np.int64, np.int32,
                            np.complex128, np.float16, np.bool_, np.uint8, np.object_])
    return relayout(rng, values(rng, shape, dtype))


def geometry_value(rng):
    r = rng.random()
    if r < 0.55:
        v = int(rng.choice(SMALL))
        return v if rng.random() < 0.6 else (v, int(rng.choice(SMALL)))
    if r < 0.7:
        return HUGE[rng.integers(0, len(HUGE))] if rng.random() < 0.5 else (
            int(rng.choice(SMALL)), HUGE[rng.integers(0, len(HUGE))])
    return WEIRD[rng.integers(0, len(WEIRD))]


def padding_value(rng):
    r = rng.random()
    if r < 0.4:
        return int(rng.integers(0, 3))
    if r < 0.6:
        return PADDINGS[rng.integers(0, len(PADDINGS))]
    if r < 0.7:
        return (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    return geometry_value(rng)


# ----------------------------------------------------------------------------- calls

def valid_call(rng, name):
    """A small valid call of ``name``: (args, kwargs). A third are shaped for the fast
    routes: Winograd (3x3, stride 1, groups 1), direct (float32, C_out a multiple of 16,
    few input channels), vectorised max pool (float32, C a multiple of 8, tiled windows)."""
    name = PREPARED.get(name, name)
    fast = rng.choice(["", "", "", "winograd", "direct", "pool", "depthwise"])
    dtype = np.float32 if fast not in ("", "depthwise") or rng.random() < 0.5 else np.float64
    big = 15 if fast == "winograd" else 9     # Winograd: several 8-tile blocks per image
    n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, big)), int(rng.integers(1, big))
    groups = 1 if fast else int(rng.choice([1, 1, 2, 3]))
    if fast == "depthwise":                   # groups == C_in, channel multiplier 1-3
        groups = c = int(rng.choice([2, 3, 5, 8, 16]))
        cout = c * int(rng.integers(1, 4))
    elif fast == "direct":
        c, cout = int(rng.integers(1, 4)), int(rng.choice([16, 32]))
    elif fast:
        c, cout = (int(rng.choice([1, 2, 3, 5, 8, 16, 17, 24, 32])) for _ in range(2))
    else:
        c, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    k = (int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1)))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    geo = dict(stride=stride, padding=[0, 1, "same", "valid", ((1, 0), (0, 1))][rng.integers(0, 5)],
               dilation=1)
    if fast == "winograd":
        k, geo["stride"] = (3, 3), 1
        if min(h, w) < 3:
            geo["padding"] = 1
    if fast == "depthwise":                   # dilation 2 where the window still fits
        geo["dilation"] = tuple(2 if 2 * (k[i] - 1) < (h, w)[i] else 1 for i in range(2))
    x = values(rng, (n, h, w, c), dtype)
    if name in ("conv2d_transpose", "conv2d_transpose_backward"):
        wt = values(rng, (k[0], k[1], cout // groups, c), dtype)
        kw = dict(geo, groups=groups, output_padding=[None, 0, 1, (1, 0)][rng.integers(0, 4)])
        if name == "conv2d_transpose":
            return [x, wt, values(rng, (cout,), dtype)], kw
        y_shape = F.conv2d_transpose(x, wt, **kw).shape
        return [values(rng, y_shape, dtype), x, wt], dict(kw, need_dx=bool(rng.random() < 0.7))
    size = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    mode = ["nearest", "bilinear"][rng.integers(0, 2)]
    if name == "upsample2d":
        return [x, size], dict(interpolation=mode)
    if name == "upsample2d_backward":
        return [values(rng, (n, h * size[0], w * size[1], c), dtype), size], dict(
            interpolation=mode)
    margins = [1, (0, 2), ((1, 0), (0, 2)), 0][rng.integers(0, 4)]
    if name in ("zero_pad2d", "crop2d"):
        return [x, margins], {}
    if name in ("conv2d", "conv2d_backward", "conv2d_max_pool2d", "conv2d_max_pool2d_backward"):
        wt = values(rng, (k[0], k[1], c // groups, cout), dtype)
        kw = dict(geo, groups=groups)
        if name == "conv2d":
            return [x, wt, values(rng, (cout,), dtype)], kw
        if name == "conv2d_max_pool2d_backward":    # mostly the fused 2x2 stride-2 pool
            pool = {}
            if rng.random() < 0.3:
                pool = dict(pool_size=[1, 2, 3, (2, 1)][rng.integers(0, 4)],
                            pool_stride=[None, 1, (2, 1)][rng.integers(0, 3)],
                            pool_padding=[0, "same", "valid"][rng.integers(0, 3)])
            z = F.conv2d(x, wt, **kw)
            for attempt in (pool, {}, dict(pool_size=1)):   # a pool that fits the output
                try:
                    p, arg = F.max_pool2d(z, attempt.get("pool_size", 2),
                                          attempt.get("pool_stride"),
                                          attempt.get("pool_padding", 0))
                    pool = attempt
                    break
                except ValueError:
                    continue
            need_dx = bool(rng.random() < (0.4 if fast == "direct" else 0.7))
            return [values(rng, p.shape, dtype), arg, x, wt], dict(kw, **pool, need_dx=need_dx)
        if name == "conv2d_max_pool2d":      # mostly the fused 2x2 stride-2 pool
            if rng.random() < 0.3:
                kw.update(pool_size=[1, 2, 3, (2, 1)][rng.integers(0, 4)],
                          pool_stride=[None, 1, (2, 1)][rng.integers(0, 3)],
                          pool_padding=[0, "same", "valid"][rng.integers(0, 3)])
            if rng.random() < 0.5:
                kw["relu"] = True
            return [x, wt, values(rng, (cout,), dtype)], kw
        y_shape = F.conv2d(x, wt, **kw).shape
        return [values(rng, y_shape, dtype), x, wt], dict(kw, need_dx=bool(rng.random() < (0.4 if fast == "direct" else 0.7)))
    if name == "im2col":
        return [x, k], geo
    if name == "col2im":
        rows = F.im2col(x, k, **geo).shape
        return [values(rng, rows, dtype), x.shape, k], geo
    pool = dict(stride=[None, 1, 2, (1, 2)][rng.integers(0, 4)],
                padding=[0, "same", "valid", (min(k) - 1, 0)][rng.integers(0, 4)])
    if fast:        # windows that tile the input: the vectorised kernels
        pool = dict(stride=None, padding=0)
    if name in ("max_pool2d", "avg_pool2d"):
        return [x, k], pool
    if name == "max_pool2d_backward":
        y, arg = F.max_pool2d(x, k, **pool)
        return [values(rng, y.shape, dtype), arg, x.shape], {}
    if name == "avg_pool2d_backward":
        y = F.avg_pool2d(x, k, **pool)
        return [values(rng, y.shape, dtype), x.shape, k], pool
    if name == "matmul":
        ta, tb = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        a = values(rng, (w, h) if ta else (h, w), dtype)
        b = values(rng, (c, w) if tb else (w, c), dtype)
        return [a, b, ta, tb], {}
    if name == "relu":
        return [values(rng, (n, h, w, c)[:int(rng.integers(1, 5))], dtype)], {}
    if name == "relu_backward":
        shape = (n, h, w, c)[:int(rng.integers(1, 5))]
        return [values(rng, shape, dtype), np.maximum(values(rng, shape, dtype), 0)], {}
    img = values(rng, (h, w), dtype)
    ker = values(rng, (int(rng.integers(1, 5)), int(rng.integers(1, 5))), dtype)
    mode = ["valid", "same", "full"][rng.integers(0, 3)]
    if mode == "valid":
        ker = ker[:h, :w]
    return [img, ker], dict(mode=mode)


GEOMETRY_KEYS = {"stride", "dilation", "groups", "output_padding"}


def mutate(rng, name, args, kwargs):
    """Replace one argument with garbage."""
    name = PREPARED.get(name, name)
    r = rng.random()
    arrays = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    if r < 0.3 and arrays:                        # an array replaced by garbage
        i = int(rng.choice(arrays))
        keep_ndim = rng.random() < 0.5
        args[i] = garbage_array(rng, args[i].ndim if keep_ndim else None,
                                args[i].dtype if rng.random() < 0.5 else None)
    elif r < 0.45 and arrays:                     # same values, another layout
        i = int(rng.choice(arrays))
        args[i] = relayout(rng, args[i])
    elif r < 0.55 and arrays:                     # dtype changed (mismatch, int, complex...)
        i = int(rng.choice(arrays))
        dt = rng.choice([np.float32, np.float64, np.int64, np.complex64, np.float16])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")      # complex -> real casts
            args[i] = args[i].astype(dt) if args[i].dtype.kind != "O" else args[i]
    elif (r < 0.65 and name in ("max_pool2d_backward", "conv2d_max_pool2d_backward")
          and arrays):                            # out-of-range (or another window's) argmax
        arg = np.array(args[1], copy=True)
        if arg.size and arg.dtype.kind in "iu":
            bad = rng.choice([-1, -2**31, 2**31, 2**62, -2**63, 10**6, 0, 1,
                              int(np.prod(args[2][1:3])) if len(args) > 2 and isinstance(
                                  args[2], tuple) else 99])
            idx = tuple(int(rng.integers(0, s)) for s in arg.shape)
            with np.errstate(all="ignore"):
                arg[idx] = np.array(bad).astype(arg.dtype) if arg.dtype != np.int64 else bad
            args[1] = arg
        else:
            args[1] = garbage_array(rng, 4, np.int64)
    elif r < 0.75:                                # input_shape / kernel_size / pool_size garbage
        positional = [i for i, a in enumerate(args) if not isinstance(a, np.ndarray)]
        if positional:
            i = int(rng.choice(positional))
            if isinstance(args[i], tuple) and len(args[i]) == 4:
                shape = list(args[i])
                shape[rng.integers(0, 4)] = rng.choice([0, -1, 2**31, 2**40, 2**63, 3, 1])
                args[i] = tuple(shape) if rng.random() < 0.8 else shape[:3]
            else:
                args[i] = geometry_value(rng)
        else:
            kwargs["mode"] = rng.choice(["valid", "same", "full", "VALID", "", None, 3])
    else:                                         # a keyword: stride, padding, dilation, groups
        keys = [k for k in kwargs if k in GEOMETRY_KEYS or k in ("padding", "interpolation")]
        if keys:
            key = keys[rng.integers(0, len(keys))]
            if key == "interpolation":
                kwargs[key] = [None, "", "NEAREST", "bicubic", 2, ("bilinear",)][
                    rng.integers(0, 6)]
            else:
                kwargs[key] = padding_value(rng) if key == "padding" else geometry_value(rng)
    return args, kwargs


def too_much_work(name, args, kwargs):
    """True for legal calls that would take long (a huge but valid computation is not what
    this test looks for): the multiply-adds are estimated from the output size, which
    padding can make far larger than the input."""
    name = PREPARED.get(name, name)
    shapes = [a.shape for a in args if isinstance(a, np.ndarray)]
    try:
        if name in ("correlate2d", "convolve2d") and len(shapes) >= 2 and all(
                len(s) == 2 for s in shapes[:2]):
            (h, w), (kh, kw) = shapes[:2]
            return float(h + kh) * (w + kw) * kh * kw > 1e8
        if name in ("conv2d_transpose", "conv2d_transpose_backward"):
            x, w = args[-2:] if name.endswith("backward") else args[:2]
            geo = {k: v for k, v in kwargs.items() if k not in ("need_dx", "b")}
            *_, (oh, ow), _, _ = F._check_conv_transpose(
                x, w, geo.get("stride", 1), geo.get("padding", 0), geo.get("output_padding"),
                geo.get("dilation", 1), geo.get("groups", 1))
            work = float(x.shape[0]) * max(oh * ow, x.shape[1] * x.shape[2])
            return work * float(np.prod([float(d) for d in w.shape])) > 1e8
        if name in ("upsample2d", "upsample2d_backward", "zero_pad2d", "crop2d"):
            return float(np.prod([float(d) for d in shapes[0]])) * 16 > 1e8 if shapes else False
        if name in ("conv2d", "conv2d_backward", "im2col", "col2im", "conv2d_max_pool2d",
                    "conv2d_max_pool2d_backward"):
            if name == "conv2d_backward":
                x, w = args[1], args[2]
            elif name == "conv2d_max_pool2d_backward":
                x, w = args[2], args[3]
            elif name in ("conv2d", "conv2d_max_pool2d"):
                x, w = args[0], args[1]
            else:
                return float(np.prod([float(d) for d in shapes[0]])) > 1e8 if shapes else False
            geo = dict(kwargs)
            for key in ("need_dx", "b", "pool_size", "pool_stride", "pool_padding", "relu"):
                geo.pop(key, None)
            *_, (oh, ow) = F._check_conv(x, w, geo.get("stride", 1), geo.get("padding", 0),
                                         geo.get("dilation", 1), geo.get("groups", 1))
            n = float(x.shape[0])
            return n * oh * ow * float(np.prod([float(d) for d in w.shape])) > 1e8
        if name in ("max_pool2d", "avg_pool2d", "avg_pool2d_backward"):
            shape = args[0].shape if name != "avg_pool2d_backward" else tuple(args[1])
            pool = args[1] if name != "avg_pool2d_backward" else args[2]
            k, _, _, (oh, ow) = F._pool_geometry(shape, pool, kwargs.get("stride"),
                                                 kwargs.get("padding", 0))
            return float(shape[0]) * shape[3] * oh * ow * k[0] * k[1] > 1e8
    except Exception:  # invalid arguments: the call itself will say so, quickly
        return False
    return False


def make_call(rng):
    name = FUNCTIONS[rng.integers(0, len(FUNCTIONS))]
    if rng.random() < 0.1:                        # pure garbage
        nargs = int(rng.integers(0, 5))
        args = [garbage_array(rng) if rng.random() < 0.6 else geometry_value(rng)
                for _ in range(nargs)]
        return name, args, {}
    args, kwargs = valid_call(rng, name)
    for _ in range(int(rng.integers(0, 4))):
        args, kwargs = mutate(rng, name, args, kwargs)
    return name, args, kwargs


# ----------------------------------------------------------------------------- checking

def _snapshot(args):
    return [np.array(a, copy=True) if isinstance(a, np.ndarray) and a.dtype.kind != "O" and
            a.size < 10**6 else None for a in args]


def check_result(name, args, kwargs, result, before):
    """Return an error string, or None when the result is acceptable."""
    for a, b in zip(args, before):
        if b is not None and not np.array_equal(a, b, equal_nan=True):
            return "an input array was modified"
    outs = list(result) if isinstance(result, tuple) else [result]
    if name == "max_pool2d":
        if outs[1].dtype != np.int32:
            return f"argmax dtype {outs[1].dtype}"
        outs = outs[:1]
    if name in BACKWARDS and not kwargs.get("need_dx", True):
        if outs[0] is not None:
            return "need_dx=False returned a dx"
        outs = outs[1:]
    dtype = np.asarray(args[0]).dtype
    for o in outs:
        if not isinstance(o, np.ndarray) or o.dtype != dtype or o.dtype.kind != "f":
            return f"result {describe(o)} not an array of the input dtype {dtype}"
    floats = [a for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    if sum(a.size for a in floats) + sum(o.size for o in outs) > 30000:
        return None
    for a in floats:
        # Compare only ordinary numbers: with inf/NaN/overflow the summation order decides
        # between inf and NaN, and denormals are flushed to zero by design (FTZ/DAZ).
        mag = np.abs(a.astype(np.float64))
        if not np.isfinite(mag).all() or (mag > 1e30).any() or ((mag > 0) & (mag < 1e-30)).any():
            return None
    try:                                          # compare with the reference when it applies
        ref = getattr(R, PREPARED.get(name, name))(*args, **{k: v for k, v in kwargs.items() if k != "need_dx"})
    except Exception:  # garbage the reference does not understand: nothing to compare
        return None
    refs = list(ref) if isinstance(ref, tuple) else [ref]
    if name == "max_pool2d":
        refs = refs[:1]
        if not np.array_equal(result[1], ref[1]):
            return "argmax differs from the reference"
    if name in BACKWARDS and not kwargs.get("need_dx", True):
        refs = refs[1:]
    for o, r in zip(outs, refs):
        r = np.asarray(r)
        if o.shape != r.shape:
            return f"shape {o.shape} != reference {r.shape}"
        if not np.array_equal(np.isfinite(o), np.isfinite(r)):
            return "non-finite values where the reference has none (or the reverse)"
        finite = np.isfinite(r)
        scale = max(1.0, float(np.abs(r[finite]).max(initial=0.0)))
        rtol = 1e-3 if o.dtype == np.float32 else 1e-9
        if not np.allclose(o[finite], r[finite], rtol=rtol, atol=rtol * scale):
            return "values differ from the reference"
    return None


@contextlib.contextmanager
def address_space_limit(extra=3 << 30):
    """Limit the address space to the current size + ``extra`` bytes (POSIX only)."""
    if resource is None or not hasattr(resource, "RLIMIT_AS"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        yield
        return
    limit = vm + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _settings(rng):
    """forced() arguments for one call: a thread count and routes this CPU has."""
    top = _testing.simd_max()
    conv = str(rng.choice(["auto", "im2col", "winograd", "winograd4", "depthwise"]
                          + (["direct"] if top >= 2 else [])))
    pools = ["auto", "generic", "avx2", "avx512"][:2 + top]
    if conv == "direct":
        pools = [p for p in pools if p in ("auto", "avx512")]
    return dict(threads=int(rng.integers(1, 4)), conv=conv, pool=str(rng.choice(pools)),
                block_bytes=1 if rng.random() < 0.3 else None)


def fuzz(seconds, seed, trace=False, calls=None):
    """Call random functions for ``seconds`` (or ``calls`` calls); return (counts,
    calls per function, problems, kernel paths reached with the team sizes seen)."""
    rng = np.random.default_rng(seed)
    counts = collections.Counter()
    per_function = collections.Counter()
    reached = collections.defaultdict(set)
    problems = []
    deadline = time.perf_counter() + (seconds if seconds is not None else float("inf"))
    attempts = 0
    with address_space_limit(), np.errstate(all="ignore"):
        while time.perf_counter() < deadline and (calls is None or attempts < calls):
            attempts += 1
            settings = _settings(rng)
            try:
                name, args, kwargs = make_call(rng)
            except ALLOWED + (OverflowError,):  # building the call hit its own garbage
                continue
            if too_much_work(name, args, kwargs):
                counts["skipped (too much work)"] += 1
                continue
            desc = f"{name}({', '.join(map(describe, args))}" + "".join(
                f", {k}={describe(v)}" for k, v in kwargs.items()) + f") with {settings}"
            if trace:
                print(desc, file=sys.stderr, flush=True)
            before = _snapshot(args)
            per_function[name] += 1

            def call(name=name, args=args, kwargs=kwargs, settings=settings):
                with _testing.forced(**settings):
                    try:
                        if name in PREPARED:
                            return prepared_call(name, args, kwargs)
                        return getattr(F, name)(*args, **kwargs)
                    finally:
                        for path, run in _testing.kernels_run().items():
                            reached[path].add(run.team)

            _judge(call, lambda result, name=name, args=args, kwargs=kwargs, before=before:
                   check_result(name, args, kwargs, result, before), desc, counts, problems)
    return counts, per_function, problems, reached


def prepared_call(name, args, kwargs):
    """F.<name> prepared for the shape of the first argument, then called on the arguments
    (the operands, with the others given to the preparation)."""
    if not args:
        raise TypeError(f"{name} needs operands")
    x = args[0]
    shape = x.shape if isinstance(x, np.ndarray) else np.shape(x)
    if name == "prepare_matmul":
        return getattr(F, name)(shape, *args[1:], **kwargs)(*args[:2])
    return getattr(F, name)(shape, *args[1:], **kwargs)(*args[:3])


def _judge(call, check, desc, counts, problems):
    """Run call(): count its outcome, and record a problem (with desc) for an exception
    other than ALLOWED, an allowed one with an empty message, or a result check() refuses."""
    try:
        result = call()
    except ALLOWED as exc:
        counts[type(exc).__name__] += 1
        if not str(exc):
            problems.append((desc, f"{type(exc).__name__} with an empty message"))
        return
    except Exception as exc:  # any other exception is a bug
        counts["other exception"] += 1
        problems.append((desc, f"{type(exc).__name__}: {exc}"))
        return
    counts["result"] += 1
    err = check(result)
    if err:
        counts["wrong result"] += 1
        problems.append((desc, err))


def helper_call(rng):
    """A call of one of the argument helpers with random (often invalid) arguments."""
    name = HELPERS[rng.integers(0, len(HELPERS))]
    if name == "conv_output_size":
        args = [geometry_value(rng) if rng.random() < 0.3 else int(rng.integers(-2, 9))
                for _ in range(int(rng.integers(1, 7)))]
        return name, args
    if name == "conv_transpose_output_size":
        return name, [geometry_value(rng) if rng.random() < 0.3 else int(rng.integers(-2, 9))
                      for _ in range(int(rng.integers(2, 8)))]
    if name == "normalize_pair":
        return name, [geometry_value(rng), "stride", int(rng.integers(0, 2))][
            :int(rng.integers(1, 4))]
    if name == "normalize_pads":
        return name, [padding_value(rng), "cropping"][:int(rng.integers(1, 3))]
    if name == "normalize_transpose_padding":
        op = None if rng.random() < 0.3 else geometry_value(rng)
        return name, [padding_value(rng), geometry_value(rng), geometry_value(rng),
                      geometry_value(rng), op][:int(rng.integers(2, 6))]
    args = [padding_value(rng), geometry_value(rng), geometry_value(rng), geometry_value(rng),
            [None, (5, 6), (0, 3), (5,), ("a", "b"), (2**63, 1), 7][rng.integers(0, 7)]]
    return name, args[:int(rng.integers(1, 6))]


def check_helper(name, args, result):
    """An error string for a result the helper should not have returned, else None."""
    ints = (int, np.integer)
    if name == "conv_transpose_output_size":
        # (size - 1) * stride - pads + dilation * (kernel - 1) + output_padding + 1
        int_args = all(isinstance(a, ints) and not isinstance(a, bool) for a in args)
        if int_args and not isinstance(result, ints):
            return f"returned {describe(result)} for int arguments"
        full = list(args) + [1, 0, 0, 0, 1][len(args) - 2:]     # defaults
        if int_args and (min(full[1], full[2], full[6]) < 1 or min(full[0], *full[3:6]) < 0):
            return f"returned {describe(result)} for an argument out of range"
        return None
    if name == "normalize_transpose_padding":
        pads, op = result
        ok = (all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(v, ints) and v >= 0
                                                              for v in p) for p in pads)
              and len(pads) == 2 and len(op) == 2
              and all(isinstance(v, ints) and v >= 0 for v in op))
        return None if ok else f"returned {describe(result)}"
    if name == "conv_output_size":
        # the formula floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1
        int_args = all(isinstance(a, ints) and not isinstance(a, bool) for a in args)
        if int_args and not isinstance(result, ints):
            return f"returned {describe(result)} for int arguments"
        full = list(args) + [1, 0, 0, 1][len(args) - 2:]       # defaults
        kernel, stride, dilation = full[1], full[2], full[5]
        if int_args and min(kernel, stride, dilation) < 1:
            return f"returned {describe(result)} for a non-positive kernel/stride/dilation"
        return None
    if name == "normalize_pair":
        ok = (isinstance(result, tuple) and len(result) == 2
              and all(isinstance(v, ints) for v in result))
    else:
        ok = (isinstance(result, tuple) and len(result) == 2
              and all(isinstance(p, tuple) and len(p) == 2 and
                      all(isinstance(v, ints) and v >= 0 for v in p) for p in result))
    return None if ok else f"returned {describe(result)}"


def fuzz_helpers(seed, calls):
    rng = np.random.default_rng(seed)
    counts, per_function, problems = collections.Counter(), collections.Counter(), []
    for _ in range(calls):
        name, args = helper_call(rng)
        if name == "conv_output_size" and len(args) < 2:
            args = args + [3]
        desc = f"{name}({', '.join(map(describe, args))})"
        per_function[name] += 1
        with np.errstate(all="ignore"):
            _judge(lambda: getattr(F, name)(*args),
                   lambda result: check_helper(name, args, result), desc, counts, problems)
    return counts, per_function, problems


def _report(counts, per_function, problems, seed, where):
    total = sum(per_function.values())
    print(f"\n[{where}] seed {seed}: {total} calls; outcomes: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"[{where}] calls per function: "
          + ", ".join(f"{k} {v}" for k, v in sorted(per_function.items())))
    for desc, err in problems[:20]:
        print(f"[{where}] PROBLEM {err}\n    {desc}")


def _budget():
    """((seconds, calls) in-process, (seconds, calls) in the subprocess): CI's fixed call
    counts, or CCONV_FUZZ_SECONDS split 70/30."""
    total = os.environ.get("CCONV_FUZZ_SECONDS")
    if total:
        return (0.7 * float(total), None), (0.3 * float(total), None)
    return (None, CALLS[0]), (None, CALLS[1])


def _seed():
    """CCONV_FUZZ_SEED (an int, or "random"); unset: FIXED_SEED, unless CCONV_FUZZ_SECONDS
    asks for a long run, which draws a new seed."""
    s = os.environ.get("CCONV_FUZZ_SEED", "")
    if s.strip().lower() == "random" or (not s and os.environ.get("CCONV_FUZZ_SECONDS")):
        return int.from_bytes(os.urandom(4), "little")
    return int(s) if s else FIXED_SEED


#: Kernel paths every run must reach (with the vectorised ones this CPU has).
ROUTE_PATHS = ["conv2d_forward", "conv2d_backward", "conv2d_backward_weights", "winograd_forward",
               "winograd_backward", "winograd4_backward", "max_pool2d_forward", "max_pool2d_backward_tiled",
               "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward", "im2col",
               "col2im", "relu_backward", "winograd_forward_pool"]
SIMD_PATHS = {1: ["max_pool2d_forward_avx2", "max_pool2d_backward_tiled_avx2"],
              2: ["max_pool2d_forward_avx512", "max_pool2d_backward_tiled_avx512",
                  "direct_forward", "direct_backward_weights", "direct_forward_pool"]}


# ----------------------------------------------------------------------------- tests

def test_fuzz_in_process():
    (seconds, calls), _ = _budget()
    seed = _seed()
    counts, per_function, problems, reached = fuzz(seconds, seed, calls=calls)
    _report(counts, per_function, problems, seed, "in-process")
    print("[in-process] kernel paths reached (team sizes): "
          + ", ".join(f"{k} {sorted(v)}" for k, v in sorted(reached.items())))
    assert sum(per_function.values()) > 100
    assert set(per_function) == set(FUNCTIONS)
    assert counts["result"] > 0 and counts["ValueError"] > 0 and counts["TypeError"] > 0
    assert not problems, (f"seed {seed}: {len(problems)} problems, first: "
                          f"{problems[0][1]} in {problems[0][0]}")
    if sum(per_function.values()) >= 2000:     # a run long enough to reach everything
        want = ROUTE_PATHS + [p for lv in (1, 2) if _testing.simd_max() >= lv
                              for p in SIMD_PATHS[lv]]
        missing = [p for p in want if p not in reached]
        assert not missing, f"seed {seed}: the fuzzer never reached {missing}"
        assert {1, 2, 3} <= set().union(*reached.values()), reached


def test_every_public_function_is_fuzzed():
    public = {name for name in F.__all__ if callable(getattr(F, name))}
    fuzzed = set(FUNCTIONS) | set(HELPERS) | set(NO_ARGUMENTS)
    assert public == fuzzed, public ^ fuzzed


def test_fuzz_argument_helpers():
    seed = _seed()
    counts, per_function, problems = fuzz_helpers(seed, calls=3000)
    _report(counts, per_function, problems, seed, "helpers")
    assert set(per_function) == set(HELPERS)
    assert not problems, (f"seed {seed}: {len(problems)} problems, e.g.:\n"
                          + "\n".join(f"{err} in {desc}" for desc, err in problems[:5]))


def test_fuzz_in_subprocess_never_crashes():
    _, (seconds, calls) = _budget()
    seed = _seed() + 1
    budget = ["--seconds", str(seconds)] if seconds is not None else ["--calls", str(calls)]
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *budget, "--seed", str(seed), "--trace"],
        capture_output=True, text=True, timeout=(seconds or 60) + 240)
    lines = proc.stdout.strip().splitlines()
    print("\n" + "\n".join(lines[-4:]))
    last_calls = "\n".join(proc.stderr.strip().splitlines()[-3:])
    assert proc.returncode == 0, (
        f"the fuzz subprocess (seed {seed}) exited with {proc.returncode}; "
        f"last calls:\n{last_calls}\nstdout tail:\n" + "\n".join(lines[-25:]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None, help="run for this long")
    p.add_argument("--calls", type=int, default=None, help="make this many calls")
    p.add_argument("--seed", type=int, default=None, help="default: a new random seed")
    p.add_argument("--trace", action="store_true", help="print every call to stderr first")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    seconds = a.seconds if a.seconds is not None or a.calls is not None else 10.0
    counts, per_function, problems, _ = fuzz(seconds, seed, trace=a.trace, calls=a.calls)
    _report(counts, per_function, problems, seed, "subprocess")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
