"""Bad input to cconv.functional: a ValueError or TypeError that names the argument.

One test per case of issue 2's "Bad input" section (wrong ndim, channel mismatch, channels
not divisible by groups, kernel larger than the padded input, zero or negative
stride/dilation/pool size, output size below 1, argmax or dy of the wrong shape or dtype,
cols with the wrong number of rows or columns), plus argmax with out-of-range indices and
wrong dtypes (integer, complex, float16, mixed float32/float64). Where the error is about an
array's shape, the message must also show that shape.
"""
import re

import numpy as np
import pytest

from cconv import functional as F


def check(exc, names, fn, *args, shapes=(), **kwargs):
    """Assert ``fn(*args, **kwargs)`` raises ``exc`` naming one of ``names`` and every shape."""
    pattern = r"\b(" + "|".join(re.escape(n) for n in names) + r")\b"
    with pytest.raises(exc, match=pattern) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    for s in shapes:
        assert str(tuple(s)) in msg, f"message {msg!r} does not show the shape {tuple(s)}"
    return msg


X = np.zeros((2, 5, 5, 3))
W = np.zeros((3, 3, 3, 4))
B = np.zeros(4)
DY = np.zeros((2, 3, 3, 4))          # conv2d(X, W) output shape
PX = np.zeros((2, 4, 4, 3))          # pooling input
PDY = np.zeros((2, 2, 2, 3))         # its 2x2 pooled shape
ARG = np.zeros((2, 2, 2, 3), dtype=np.int64)


# ----------------------------------------------------------------------------- wrong ndim

@pytest.mark.parametrize("bad", [np.zeros((5, 5, 3)), np.zeros((1, 2, 5, 5, 3)), np.zeros(3),
                                 np.float64(1.0)], ids=["3d", "5d", "1d", "0d"])
def test_wrong_ndim_x(bad):
    for fn, args in [(F.conv2d, (bad, W)), (F.im2col, (bad, 3)), (F.max_pool2d, (bad,)),
                     (F.avg_pool2d, (bad,))]:
        check(ValueError, ["x"], fn, *args, shapes=[bad.shape])
    check(ValueError, ["x"], F.conv2d_backward, DY, bad, W, shapes=[bad.shape])


def test_wrong_ndim_w():
    check(ValueError, ["w"], F.conv2d, X, W[0], shapes=[W[0].shape])
    check(ValueError, ["w"], F.conv2d_backward, DY, X, W[..., None], shapes=[W[..., None].shape])


def test_wrong_ndim_b():
    check(ValueError, ["b"], F.conv2d, X, W, B[:, None], shapes=[(4, 1)])
    check(ValueError, ["b"], F.conv2d, X, W, np.float64(0.0), shapes=[()])


def test_wrong_ndim_dy():
    check(ValueError, ["dy"], F.conv2d_backward, DY[0], X, W, shapes=[DY[0].shape])
    check(ValueError, ["dy"], F.max_pool2d_backward, PDY[0], ARG[0], PX.shape,
          shapes=[PDY[0].shape])
    check(ValueError, ["dy"], F.avg_pool2d_backward, PDY[..., None], PX.shape,
          shapes=[PDY[..., None].shape])


def test_wrong_ndim_cols_image_kernel():
    check(ValueError, ["cols"], F.col2im, np.zeros((4, 4, 1)), (1, 3, 3, 1), 2,
          shapes=[(4, 4, 1)])
    check(ValueError, ["cols"], F.col2im, np.zeros(16), (1, 3, 3, 1), 2, shapes=[(16,)])
    for fn in (F.correlate2d, F.convolve2d):
        check(ValueError, ["image"], fn, np.zeros((3, 3, 1)), np.zeros((2, 2)),
              shapes=[(3, 3, 1)])
        check(ValueError, ["kernel"], fn, np.zeros((3, 3)), np.zeros(2), shapes=[(2,)])


def test_ndim_messages_describe_the_right_layout():
    """The weights are (KH, KW, C_in/groups, C_out) and cols (N*OH*OW, KH*KW*C): a message
    for them must not describe the NHWC activation or 2-D image layout."""
    msg = check(ValueError, ["w"], F.conv2d, X, W[0])
    assert "(N, H, W, C)" not in msg, msg
    msg = check(ValueError, ["cols"], F.col2im, np.zeros((4, 4, 1)), (1, 3, 3, 1), 2)
    assert "(H, W)" not in msg, msg


# ----------------------------------------------------------------------------- channels / groups

def test_channel_mismatch_between_x_and_w():
    w = np.zeros((3, 3, 2, 4))
    msg = check(ValueError, ["x", "w"], F.conv2d, X, w, shapes=[X.shape, w.shape])
    assert "3" in msg and "2" in msg
    check(ValueError, ["x", "w"], F.conv2d_backward, DY, X, w, shapes=[X.shape, w.shape])
    # with groups: x has 4 channels, w expects 2 per group * 3 groups = 6
    check(ValueError, ["x", "w", "groups"], F.conv2d, np.zeros((1, 5, 5, 4)),
          np.zeros((3, 3, 2, 6)), groups=3, shapes=[(1, 5, 5, 4)])


def test_c_in_not_divisible_by_groups():
    check(ValueError, ["groups"], F.conv2d, X, np.zeros((3, 3, 1, 4)), groups=2,
          shapes=[X.shape])
    check(ValueError, ["groups"], F.conv2d_backward, DY, X, np.zeros((3, 3, 1, 4)), groups=2)


def test_c_out_not_divisible_by_groups():
    x = np.zeros((2, 5, 5, 4))
    w = np.zeros((3, 3, 2, 3))
    check(ValueError, ["groups"], F.conv2d, x, w, groups=2, shapes=[w.shape])
    check(ValueError, ["groups"], F.conv2d_backward, np.zeros((2, 3, 3, 3)), x, w, groups=2)


@pytest.mark.parametrize("groups", [0, -1])
def test_groups_not_positive(groups):
    check(ValueError, ["groups"], F.conv2d, X, W, groups=groups)


def test_groups_not_an_int():
    check(TypeError, ["groups"], F.conv2d, X, W, groups=1.5)
    check(TypeError, ["groups"], F.conv2d, X, W, groups="2")


# ----------------------------------------------------------------------------- geometry

def test_kernel_larger_than_padded_input():
    w = np.zeros((7, 7, 3, 4))
    check(ValueError, ["w", "kernel"], F.conv2d, X, w, shapes=[X.shape])
    check(ValueError, ["w", "kernel"], F.conv2d, X, w, padding=0, shapes=[X.shape])
    # 5 + 1 + 0 = 6 < 7: still too large with asymmetric padding
    check(ValueError, ["w", "kernel"], F.conv2d, X, w, padding=((1, 0), (1, 1)))
    check(ValueError, ["kernel_size", "kernel"], F.im2col, X, (6, 2))
    check(ValueError, ["kernel_size", "kernel"], F.col2im, np.zeros((2, 36)), X.shape, (6, 2))
    check(ValueError, ["pool_size", "pool"], F.max_pool2d, PX, 5)
    check(ValueError, ["pool_size", "pool"], F.avg_pool2d, PX, (2, 5))
    check(ValueError, ["kernel"], F.correlate2d, np.zeros((3, 3)), np.zeros((4, 2)))
    check(ValueError, ["kernel"], F.convolve2d, np.zeros((3, 3)), np.zeros((2, 4)))


def test_kernel_equal_to_padded_input_is_legal():
    y = F.conv2d(X, np.zeros((7, 7, 3, 4)), padding=1)
    assert y.shape == (2, 1, 1, 4)


def test_output_size_below_one():
    # a dilated 3x3 kernel spans 1 + 2*3 = 7 > 5 pixels
    check(ValueError, ["w", "kernel", "dilation"], F.conv2d, X, W, dilation=3)
    check(ValueError, ["w", "kernel", "dilation"], F.conv2d_backward, DY, X, W, dilation=(1, 3))
    check(ValueError, ["kernel_size", "kernel", "dilation"], F.im2col, X, 2, dilation=5)


@pytest.mark.parametrize("value", [0, -1, (1, 0), (-2, 1), (0, 0)], ids=str)
def test_stride_not_positive(value):
    check(ValueError, ["stride"], F.conv2d, X, W, stride=value)
    check(ValueError, ["stride"], F.conv2d_backward, DY, X, W, stride=value)
    check(ValueError, ["stride"], F.im2col, X, 2, stride=value)
    check(ValueError, ["stride"], F.col2im, np.zeros((32, 12)), X.shape, 2, stride=value)
    check(ValueError, ["stride"], F.max_pool2d, PX, 2, stride=value)
    check(ValueError, ["stride"], F.avg_pool2d, PX, 2, stride=value)
    check(ValueError, ["stride"], F.avg_pool2d_backward, PDY, PX.shape, 2, stride=value)


@pytest.mark.parametrize("value", [0, -1, (1, 0), (-3, 2)], ids=str)
def test_dilation_not_positive(value):
    check(ValueError, ["dilation"], F.conv2d, X, W, dilation=value)
    check(ValueError, ["dilation"], F.conv2d_backward, DY, X, W, dilation=value)
    check(ValueError, ["dilation"], F.im2col, X, 2, dilation=value)
    check(ValueError, ["dilation"], F.col2im, np.zeros((32, 12)), X.shape, 2, dilation=value)


@pytest.mark.parametrize("value", [0, -1, (2, 0), (-1, 2)], ids=str)
def test_pool_size_not_positive(value):
    check(ValueError, ["pool_size"], F.max_pool2d, PX, value)
    check(ValueError, ["pool_size"], F.avg_pool2d, PX, value)
    check(ValueError, ["pool_size"], F.avg_pool2d_backward, PDY, PX.shape, value)


@pytest.mark.parametrize("value", [0, -2])
def test_kernel_size_not_positive(value):
    check(ValueError, ["kernel_size"], F.im2col, X, value)
    check(ValueError, ["kernel_size"], F.col2im, np.zeros((32, 12)), X.shape, (2, value))


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [1.5, "2", None, (1, 2, 3), (1.0, 2)], ids=repr)
def test_stride_dilation_wrong_type(name, value):
    with pytest.raises((TypeError, ValueError), match=rf"\b{name}\b"):
        F.conv2d(X, W, **{name: value})


@pytest.mark.parametrize("padding", [-1, (0, -1), ((1, -1), (0, 0)), (1, 2, 3), "middle",
                                     ((1, 1), (1,)), 1.5], ids=repr)
def test_bad_padding(padding):
    with pytest.raises((TypeError, ValueError), match=r"\bpadding\b"):
        F.conv2d(X, W, padding=padding)
    with pytest.raises((TypeError, ValueError), match=r"\bpadding\b"):
        F.max_pool2d(PX, 2, padding=padding)


def test_pool_padding_as_large_as_the_window():
    check(ValueError, ["padding"], F.max_pool2d, PX, 2, padding=2)
    check(ValueError, ["padding"], F.avg_pool2d, PX, 3, padding=(0, 3))
    check(ValueError, ["padding"], F.avg_pool2d_backward, PDY, PX.shape, 2, padding=2)


def test_bad_mode():
    for fn in (F.correlate2d, F.convolve2d):
        check(ValueError, ["mode"], fn, np.zeros((3, 3)), np.zeros((2, 2)), mode="nope")


def test_zero_size_spatial_or_channel_dims():
    check(ValueError, ["x"], F.conv2d, np.zeros((1, 0, 5, 3)), W, shapes=[(1, 0, 5, 3)])
    check(ValueError, ["x"], F.max_pool2d, np.zeros((1, 4, 0, 3)), shapes=[(1, 4, 0, 3)])
    check(ValueError, ["w"], F.conv2d, X, np.zeros((3, 3, 3, 0)), shapes=[(3, 3, 3, 0)])
    check(ValueError, ["image"], F.correlate2d, np.zeros((0, 3)), np.zeros((1, 1)))
    check(ValueError, ["input_shape"], F.col2im, np.zeros((0, 4)), (1, 0, 3, 1), 2)


# ----------------------------------------------------------------------------- dy / argmax / cols

def test_conv_dy_wrong_shape():
    for bad in [(2, 3, 3, 5), (1, 3, 3, 4), (2, 4, 3, 4)]:
        check(ValueError, ["dy"], F.conv2d_backward, np.zeros(bad), X, W,
              shapes=[bad, DY.shape])


def test_avg_pool_dy_wrong_shape():
    for bad in [(2, 3, 2, 3), (1, 2, 2, 3), (2, 2, 2, 4)]:
        check(ValueError, ["dy", "input_shape"], F.avg_pool2d_backward, np.zeros(bad), PX.shape,
              shapes=[bad])


def test_max_pool_dy_and_argmax_disagree():
    check(ValueError, ["argmax"], F.max_pool2d_backward, PDY, ARG[:, :1], PX.shape,
          shapes=[ARG[:, :1].shape, PDY.shape])
    check(ValueError, ["argmax"], F.max_pool2d_backward, PDY, ARG[..., None], PX.shape,
          shapes=[ARG[..., None].shape])
    check(ValueError, ["dy", "input_shape"], F.max_pool2d_backward, PDY, ARG, (3, 4, 4, 3))
    check(ValueError, ["dy", "input_shape"], F.max_pool2d_backward, PDY, ARG, (2, 4, 4, 5))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, complex, bool])
def test_max_pool_argmax_wrong_dtype(dtype):
    check(TypeError, ["argmax"], F.max_pool2d_backward, PDY, ARG.astype(dtype), PX.shape)


@pytest.mark.parametrize("value", [-1, 16, 17, 2**40, -2**62, np.iinfo(np.int64).max,
                                   np.iinfo(np.int64).min])
def test_max_pool_argmax_out_of_range_is_rejected(value):
    arg = ARG.copy()
    arg[1, 1, 0, 2] = value
    dy = np.ones_like(PDY)
    check(ValueError, ["argmax"], F.max_pool2d_backward, dy, arg, PX.shape)


def test_max_pool_argmax_out_of_range_other_integer_dtypes():
    for dtype, value in [(np.int32, -5), (np.int32, 16), (np.uint64, 2**64 - 1),
                         (np.uint32, 2**32 - 1), (np.int8, -1)]:
        arg = ARG.astype(dtype)
        arg[0, 0, 0, 0] = value
        with pytest.raises((ValueError, TypeError), match=r"\bargmax\b"):
            F.max_pool2d_backward(PDY, arg, PX.shape)


def test_max_pool_argmax_valid_after_forward():
    y, arg = F.max_pool2d(PX)
    dx = F.max_pool2d_backward(np.ones_like(y), arg, PX.shape)
    assert dx.shape == PX.shape and dx.sum() == y.size


def test_cols_wrong_rows_or_columns():
    # input (1, 3, 3, 1), kernel 2: cols must be (4, 4)
    for bad in [(3, 4), (5, 4), (4, 3), (4, 5), (0, 4)]:
        check(ValueError, ["cols"], F.col2im, np.zeros(bad), (1, 3, 3, 1), 2,
              shapes=[bad, (4, 4)])


@pytest.mark.parametrize("shape", [(1, 3, 3), (1, 3, 3, 1, 1), (1, -3, 3, 1), (1, 3, 0, 1),
                                   (1, 3, 3, 1.5), "1331", None], ids=repr)
def test_bad_input_shape(shape):
    with pytest.raises((ValueError, TypeError), match=r"\binput_shape\b"):
        F.col2im(np.zeros((4, 4)), shape, 2)
    with pytest.raises((ValueError, TypeError), match=r"\binput_shape\b"):
        F.avg_pool2d_backward(PDY, shape)
    with pytest.raises((ValueError, TypeError), match=r"\binput_shape\b"):
        F.max_pool2d_backward(PDY, ARG, shape)


# ----------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.complex128, np.complex64,
                                   np.float16, bool, object], ids=str)
def test_unsupported_dtypes(dtype):
    xb = X.astype(dtype)
    check(TypeError, ["x"], F.conv2d, xb, W)
    check(TypeError, ["x"], F.im2col, xb, 2)
    check(TypeError, ["x"], F.max_pool2d, xb)
    check(TypeError, ["x"], F.avg_pool2d, xb)
    check(TypeError, ["w"], F.conv2d, X, W.astype(dtype))
    check(TypeError, ["b"], F.conv2d, X, W, B.astype(dtype))
    check(TypeError, ["dy"], F.conv2d_backward, DY.astype(dtype), X, W)
    check(TypeError, ["dy"], F.avg_pool2d_backward, PDY.astype(dtype), PX.shape)
    check(TypeError, ["dy"], F.max_pool2d_backward, PDY.astype(dtype), ARG, PX.shape)
    check(TypeError, ["cols"], F.col2im, np.zeros((4, 4), dtype), (1, 3, 3, 1), 2)
    check(TypeError, ["image"], F.correlate2d, np.zeros((3, 3), dtype), np.zeros((2, 2)))
    check(TypeError, ["kernel"], F.convolve2d, np.zeros((3, 3)), np.zeros((2, 2), dtype))


@pytest.mark.parametrize("a, b", [(np.float32, np.float64), (np.float64, np.float32)])
def test_mixed_float_dtypes(a, b):
    check(TypeError, ["w"], F.conv2d, X.astype(a), W.astype(b))
    check(TypeError, ["b"], F.conv2d, X.astype(a), W.astype(a), B.astype(b))
    check(TypeError, ["w"], F.conv2d_backward, DY.astype(a), X.astype(a), W.astype(b))
    check(TypeError, ["dy"], F.conv2d_backward, DY.astype(b), X.astype(a), W.astype(a))
    check(TypeError, ["kernel"], F.correlate2d, np.zeros((3, 3), a), np.zeros((2, 2), b))
    check(TypeError, ["kernel"], F.convolve2d, np.zeros((3, 3), a), np.zeros((2, 2), b))


def test_none_arrays():
    check(TypeError, ["x"], F.conv2d, None, W)
    check(TypeError, ["w"], F.conv2d, X, None)
    check(TypeError, ["dy"], F.conv2d_backward, None, X, W)
    check(TypeError, ["x"], F.max_pool2d, None)
    check(TypeError, ["argmax"], F.max_pool2d_backward, PDY, None, PX.shape)


def test_relu_backward_bad_input():
    dy = np.zeros((2, 3))
    check(ValueError, ["dy", "y"], F.relu_backward, dy, np.zeros((3, 2)), shapes=[(2, 3), (3, 2)])
    check(TypeError, ["y"], F.relu_backward, dy, np.zeros((2, 3), np.float32))
    check(TypeError, ["dy"], F.relu_backward, dy.astype(np.int64), np.zeros((2, 3)))
    check(TypeError, ["y"], F.relu_backward, dy, np.zeros((2, 3), complex))
    check(TypeError, ["dy"], F.relu_backward, None, np.zeros((2, 3)))


def test_conv2d_max_pool2d_checks_both_halves():
    """conv2d_max_pool2d refuses what conv2d refuses, names the pool arguments and the
    convolution's output shape for a pool that does not fit it, and wants a bool relu."""
    check(ValueError, ["w"], F.conv2d_max_pool2d, X, np.zeros((3, 3, 2, 4)),
          shapes=[X.shape, (3, 3, 2, 4)])
    check(ValueError, ["b"], F.conv2d_max_pool2d, X, W, np.zeros(5), shapes=[(5,)])
    check(TypeError, ["x", "w"], F.conv2d_max_pool2d, X, W.astype(np.float32))
    check(ValueError, ["pool_size"], F.conv2d_max_pool2d, np.zeros((1, 3, 3, 3)), W,
          shapes=[(1, 1, 1, 4)])
    check(ValueError, ["pool_size"], F.conv2d_max_pool2d, X, W, pool_size=0)
    check(ValueError, ["pool_padding"], F.conv2d_max_pool2d, X, W, pool_padding=2)
    check(TypeError, ["relu"], F.conv2d_max_pool2d, X, W, relu=1)
    check(ValueError, ["out"], F.conv2d_max_pool2d, X, W, out=np.zeros((2, 2, 2, 4)),
          shapes=[(2, 1, 1, 4)])


def test_conv2d_max_pool2d_backward_checks_its_arguments():
    """conv2d_max_pool2d_backward refuses what conv2d_backward and max_pool2d_backward refuse:
    dy of another shape than the pooled output, argmax not integers or of dy's shape,
    indices outside the convolution's output plane (on the fused route too, float32 with a
    3-channel input), a non-bool need_dx, relu_output of another shape or dtype than dy, bad
    out."""
    dp = np.zeros((2, 1, 1, 4))             # the 2x2 pool of conv2d(X, W): (2, 3, 3, 4) -> 1x1
    arg = np.zeros((2, 1, 1, 4), np.int32)
    check(ValueError, ["dy"], F.conv2d_max_pool2d_backward, DY, arg, X, W,
          shapes=[(2, 1, 1, 4), DY.shape])
    check(ValueError, ["argmax"], F.conv2d_max_pool2d_backward, dp, np.zeros((2, 1, 1, 3),
                                                                            np.int32), X, W,
          shapes=[(2, 1, 1, 3)])
    check(TypeError, ["argmax"], F.conv2d_max_pool2d_backward, dp, arg.astype(float), X, W)
    check(TypeError, ["x", "dy"], F.conv2d_max_pool2d_backward, dp.astype(np.float32), arg, X, W)
    check(ValueError, ["w"], F.conv2d_max_pool2d_backward, dp, arg, X, np.zeros((3, 3, 2, 4)),
          shapes=[(3, 3, 2, 4)])
    check(ValueError, ["pool_size"], F.conv2d_max_pool2d_backward, dp, arg, X, W, pool_size=4)
    check(TypeError, ["need_dx"], F.conv2d_max_pool2d_backward, dp, arg, X, W, need_dx=1)
    check(ValueError, ["relu_output"], F.conv2d_max_pool2d_backward, dp, arg, X, W,
          relu_output=np.zeros((2, 1, 2, 4)), shapes=[(2, 1, 2, 4), (2, 1, 1, 4)])
    check(TypeError, ["relu_output", "dy"], F.conv2d_max_pool2d_backward, dp, arg, X, W,
          relu_output=np.zeros((2, 1, 1, 4), np.float32))
    check(ValueError, ["out"], F.conv2d_max_pool2d_backward, dp, arg, X, W, need_dx=False,
          out=(np.zeros(X.shape), np.zeros(W.shape), np.zeros(4)))
    for dtype in (np.float32, np.float64):
        for bad in (-1, 9, 2**31 - 1):      # the output plane is 3 x 3: [0, 9)
            a = arg.copy()
            a[1, 0, 0, 2] = bad
            check(ValueError, ["argmax"], F.conv2d_max_pool2d_backward, dp.astype(dtype), a,
                  X.astype(dtype), W.astype(dtype), need_dx=False)
