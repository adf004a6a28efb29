"""The layers of issue 13 without PyTorch: references written from the definitions
(tests/reference.py), adjoint identities, finite differences, shapes, configs, bad input."""
import json

import numpy as np
import pytest

import cconv
from cconv import functional as F, layers as L

import reference as R

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def rand(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def close(a, b, dtype, what=""):
    np.testing.assert_allclose(a, b, err_msg=what, **TOL[dtype])


# ---------------------------------------------------------------------------------
# conv2d_transpose against the scatter of the definition, on every route
# ---------------------------------------------------------------------------------
# input (N, H, W, C_in), C_out, kernel, stride, explicit pads, output_padding, dilation, groups
DEFINITION_CASES = [
    ((2, 5, 4, 3), 4, (3, 3), 1, ((0, 0), (0, 0)), 0, 1, 1),
    ((2, 5, 4, 3), 4, (3, 3), 1, ((2, 1), (0, 2)), 0, 1, 1),
    ((1, 4, 5, 4), 6, (2, 3), (2, 3), ((1, 0), (0, 2)), (1, 2), 1, 2),
    ((2, 3, 4, 2), 3, (3, 2), 2, ((0, 0), (1, 1)), 1, (2, 1), 1),
    ((2, 4, 4, 6), 6, (3, 3), 1, ((1, 1), (1, 1)), 1, 2, 3),
    ((1, 7, 5, 2), 3, (3, 3), 1, ((4, 3), (2, 2)), 0, 1, 1),      # pads beyond the kernel
    ((2, 3, 3, 16), 8, (3, 3), 1, ((1, 1), (0, 1)), 0, 1, 1),      # Winograd
    ((2, 3, 2, 3), 2, (1, 1), 3, ((0, 1), (1, 0)), 2, 1, 1),       # output padding past pb
    ((2, 3, 4, 5), 4, (1, 1), 1, ((0, 0), (0, 0)), 0, 1, 1),       # 1x1: a GEMM, no im2col
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DEFINITION_CASES)
def test_conv2d_transpose_matches_the_definition(case, dtype):
    shape, cout, k, s, pads, op, d, g = case
    x = rand(shape, dtype, 1)
    w = rand(k + (cout // g, shape[3]), dtype, 2)
    b = rand((cout,), dtype, 3)
    y = F.conv2d_transpose(x, w, b, s, pads, op, d, g)
    assert y.dtype == dtype
    close(y, R.conv2d_transpose(x, w, b, s, pads, op, d, g), dtype)


@pytest.mark.parametrize("case", DEFINITION_CASES)
def test_conv2d_transpose_is_the_adjoint_of_conv2d(case):
    """<conv2d(z, w), x> == <z, conv2d_transpose(x, w)> for the convolution whose input has
    the transposed convolution's output size (output padding beyond the bottom pad adds
    rows no tap reaches), and the backward pass is the same identity differentiated."""
    shape, cout, k, s, pads, op, d, g = case
    op = F.normalize_pair(op, "op", 0)
    x = rand(shape, np.float64, 1)
    w = rand(k + (cout // g, shape[3]), np.float64, 2)
    y = F.conv2d_transpose(x, w, None, s, pads, op, d, g)
    z = rand(y.shape, np.float64, 4)
    extra = [max(op[i] - pads[i][1], 0) for i in range(2)]
    zc = z[:, :y.shape[1] - extra[0], :y.shape[2] - extra[1]]
    core = tuple((pads[i][0], max(pads[i][1] - op[i], 0)) for i in range(2))
    conv = F.conv2d(zc, w, None, s, core, d, g)
    assert conv.shape == x.shape
    np.testing.assert_allclose(np.vdot(conv, x), np.vdot(zc, y[:, :zc.shape[1], :zc.shape[2]]),
                               rtol=1e-12)
    dx, dw, db = F.conv2d_transpose_backward(z, x, w, s, pads, op, d, g)
    np.testing.assert_allclose(dx, conv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, z.sum(axis=(0, 1, 2)), rtol=1e-12)
    assert dw.shape == w.shape
    # d<z, y>/dw by central differences (y is linear in w: exact up to rounding)
    dirn = rand(w.shape, np.float64, 5)
    num = (np.vdot(z, F.conv2d_transpose(x, w + dirn, None, s, pads, op, d, g))
           - np.vdot(z, F.conv2d_transpose(x, w - dirn, None, s, pads, op, d, g))) / 2
    np.testing.assert_allclose(np.vdot(dw, dirn), num, rtol=1e-10)


def test_conv2d_transpose_routes_agree(monkeypatch):
    """Stride 1 runs as a forward convolution: with Winograd, and with the im2col route;
    both agree with the definition, in both dtypes, with and without groups."""
    for dtype in DTYPES:
        x, w, b = rand((2, 5, 6, 16), dtype, 1), rand((3, 3, 8, 16), dtype, 2), rand((8,), dtype)
        ref = R.conv2d_transpose(x, w, b, 1, ((1, 0), (1, 1)), 0)
        close(F.conv2d_transpose(x, w, b, 1, ((1, 0), (1, 1))), ref, dtype, "winograd")
        monkeypatch.setattr(F, "WINOGRAD_MIN_CHANNELS", None)
        close(F.conv2d_transpose(x, w, b, 1, ((1, 0), (1, 1))), ref, dtype, "im2col")
        monkeypatch.undo()
        w2 = rand((3, 3, 4, 16), dtype, 2)
        close(F.conv2d_transpose(x, w2, b, 1, 1, groups=2),
              R.conv2d_transpose(x, w2, b, 1, ((1, 1), (1, 1)), 0, 1, 2), dtype, "groups")


@pytest.mark.parametrize("threads", [1, 2])
def test_conv2d_transpose_threads_give_the_same_result(threads, restore_threads, monkeypatch):
    """The stride-2 route on 1 and 2 threads (the batch is large enough for col2im and the
    GEMM to take both), in chunks of images, against the definition."""
    cconv.set_num_threads(threads)
    used = []
    for name in ("col2im", "matmul"):
        def spy(*args, _fn=getattr(F._core, name)):
            used.append(args[-1])                    # the thread count the kernel was given
            return _fn(*args)
        monkeypatch.setattr(F._core, name, spy)
    x, w = rand((5, 16, 16, 16), np.float64, 1), rand((3, 3, 16, 16), np.float64, 2)
    image = 16 * 16 * 9 * 16                         # elements of one image's columns
    monkeypatch.setattr(F, "TRANSPOSE_CHUNK_BYTES", 2 * image * 8)     # 2 images a chunk
    assert 2 * image >= 2 * F.MIN_WORK_PER_THREAD > image
    y = F.conv2d_transpose(x, w, None, 2, 1, 1)
    # GEMM and col2im of the chunks of 2, 2 and 1 images (one image: one thread)
    assert used == [threads] * 4 + [1, 1]
    close(y, R.conv2d_transpose(x, w, None, 2, ((1, 1), (1, 1)), 1), np.float64)


def test_conv2d_transpose_padding_strings():
    """Keras's sizes: "same" H * stride, "valid" (H - 1) * stride + max(extent, stride)."""
    x = rand((1, 5, 4, 2))
    for k, s in [(3, 2), (4, 2), (5, 3), (1, 3), (3, 1), (2, 2)]:
        w = rand((k, k, 3, 2))
        assert F.conv2d_transpose(x, w, stride=s, padding="same").shape == (1, 5 * s, 4 * s, 3)
        assert F.conv2d_transpose(x, w, stride=s, padding="valid").shape == (
            1, 4 * s + max(k, s), 3 * s + max(k, s), 3)
    assert F.normalize_transpose_padding("same", 3, 2) == (((0, 1), (0, 1)), (0, 0))
    assert F.normalize_transpose_padding("same", 5, 2) == (((1, 2), (1, 2)), (0, 0))
    assert F.normalize_transpose_padding("valid", 1, 3) == (((0, 0), (0, 0)), (2, 2))
    assert F.normalize_transpose_padding(1, 3, 2, 1, 1) == (((1, 1), (1, 1)), (1, 1))
    assert F.conv_transpose_output_size(5, 3, 2, 1, 1, 1) == 10


def test_conv2d_transpose_where_no_tap_reaches_holds_the_bias():
    x, w, b = rand((2, 1, 1, 2)), rand((1, 1, 3, 2)), rand((3,))
    y = F.conv2d_transpose(x, w, b, stride=3, padding=1, output_padding=2)
    assert y.shape == (2, 1, 1, 3)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))
    dx, dw, db = F.conv2d_transpose_backward(np.ones_like(y), x, w, 3, 1, 2)
    assert not dx.any() and not dw.any() and np.array_equal(db, [2.0, 2.0, 2.0])


def test_conv2d_transpose_empty_batch_and_float32():
    x, w = rand((0, 4, 4, 3), np.float32), rand((3, 3, 2, 3), np.float32)
    for s in (1, 2):
        y = F.conv2d_transpose(x, w, None, s)
        assert y.shape == (0, 4 * s + (3 - s), 4 * s + (3 - s), 2) and y.dtype == np.float32
        dx, dw, db = F.conv2d_transpose_backward(y, x, w, s)
        assert dx.shape == x.shape and not dw.any() and db.shape == (2,)


BAD_FUNCTIONAL = [
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 2, 4))), ValueError,
     r"x has 3 channels.*\(3, 3, 2, 4\).*C_in = 4"),
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 2, 3), np.float32)), TypeError,
     "float64.*float32"),
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 3))), ValueError,
     r"w must be 4-D \(KH, KW, C_out/groups, C_in\).*\(3, 3, 3\)"),
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 2, 3)), stride=2,
                                output_padding=2), ValueError, r"output_padding.*\(2, 2\).*stride"),
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 2, 3)), groups=2), ValueError,
     "divisible by groups=2"),
    (lambda: F.conv2d_transpose(rand((1, 2, 2, 3)), rand((3, 3, 2, 3)), padding=3), ValueError,
     r"padding \(3, 3\).*height of -2"),
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 2, 3)), rand((3,))), ValueError,
     r"b must have shape \(C_out,\) = \(2,\)"),
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 2, 3)), padding="full"),
     ValueError, "full"),
    (lambda: F.conv2d_transpose(rand((1, 4, 4, 3)), rand((3, 3, 2, 3)), output_padding=-1),
     ValueError, "output_padding.*-1"),
    (lambda: F.conv2d_transpose_backward(rand((1, 6, 6, 3)), rand((1, 4, 4, 3)),
                                         rand((3, 3, 2, 3))), ValueError,
     r"dy must have the output shape.*\(1, 6, 6, 2\).*\(1, 6, 6, 3\)"),
    (lambda: F.upsample2d(rand((1, 2, 2, 1)), 0), ValueError, "size.*0"),
    (lambda: F.upsample2d(rand((1, 2, 2, 1)), 2, "bicubic"), ValueError, "bicubic"),
    (lambda: F.upsample2d(rand((2, 2, 1)), 2), ValueError, r"x must be 4-D.*\(2, 2, 1\)"),
    (lambda: F.upsample2d_backward(rand((1, 5, 4, 1)), 2), ValueError, r"\(1, 5, 4, 1\)"),
    (lambda: F.crop2d(rand((1, 4, 4, 1)), ((2, 2), (0, 0))), ValueError,
     r"cropping \(\(2, 2\), \(0, 0\)\).*\(1, 4, 4, 1\)"),
    (lambda: F.zero_pad2d(rand((1, 4, 4, 1)), ((1, 2), 3)), ValueError, r"padding.*\(1, 2\), 3"),
    (lambda: F.zero_pad2d(rand((1, 4, 4, 1)), -1), ValueError, "padding.*-1"),
    (lambda: F.zero_pad2d(rand((1, 4, 4, 1)), "same"), TypeError, "padding.*same"),
]


@pytest.mark.parametrize("call,exc,match", BAD_FUNCTIONAL)
def test_functional_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_conv2d_transpose_checks_before_copying():
    """A huge broadcast (non-contiguous) argument is refused before it is copied."""
    x = np.broadcast_to(np.float64(1), (10**6, 100, 100, 3))
    with pytest.raises(ValueError, match="channel mismatch"):
        F.conv2d_transpose(x, rand((3, 3, 2, 4)))


def test_non_contiguous_inputs_give_the_same_result():
    x, w = rand((2, 5, 6, 8)), rand((3, 3, 4, 4))
    xs = np.asfortranarray(x)[:, :, :, ::2]
    ref = F.conv2d_transpose(np.ascontiguousarray(xs), w, stride=2)
    np.testing.assert_array_equal(F.conv2d_transpose(xs, w, stride=2), ref)


# ---------------------------------------------------------------------------------
# Upsampling, padding, cropping
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,shape", [(2, (2, 3, 4, 2)), ((3, 2), (1, 5, 3, 3)),
                                        ((1, 3), (2, 1, 4, 1)), (4, (1, 2, 2, 2))])
def test_upsample_against_the_definition_and_adjoint(size, shape, dtype):
    x = rand(shape, dtype, 1)
    sh, sw = F.normalize_pair(size, "size")
    close(F.upsample2d(x, size, "nearest"), x.repeat(sh, axis=1).repeat(sw, axis=2), dtype)
    close(F.upsample2d(x, size, "bilinear"), R.upsample_bilinear(x, size), dtype)
    for mode in ("nearest", "bilinear"):
        y = F.upsample2d(x, size, mode)
        assert y.dtype == dtype
        z = rand(y.shape, dtype, 2)
        dx = F.upsample2d_backward(z, size, mode)
        assert dx.shape == x.shape and dx.dtype == dtype
        np.testing.assert_allclose(np.vdot(y.astype(np.float64), z),
                                   np.vdot(x.astype(np.float64), dx), rtol=1e-5)


def test_pad_and_crop_are_adjoint():
    x = rand((2, 4, 5, 3), seed=1)
    for arg in (1, (2, 0), ((0, 3), (2, 1))):
        y = F.zero_pad2d(x, arg)
        z = rand(y.shape, seed=2)
        np.testing.assert_allclose(np.vdot(y, z), np.vdot(x, F.crop2d(z, arg)), rtol=1e-12)
        np.testing.assert_array_equal(F.crop2d(y, arg), x)
    assert F.normalize_pads(((0, 3), (2, 1)), "cropping") == ((0, 3), (2, 1))
    assert F.normalize_pads((2, 1)) == ((2, 2), (1, 1))


# ---------------------------------------------------------------------------------
# Layers: finite differences, shapes, configs
# ---------------------------------------------------------------------------------
LAYERS = [
    ("conv transpose", lambda: L.Conv2DTranspose(3, 3, stride=2, padding=1, output_padding=1),
     (2, 4, 3, 2)),
    ("conv transpose same gelu", lambda: L.Conv2DTranspose(2, (2, 3), stride=(2, 1),
                                                           padding="same", activation="gelu"),
     (2, 3, 4, 3)),
    ("conv transpose groups dilation", lambda: L.Conv2DTranspose(4, 2, dilation=2, groups=2,
                                                                 padding=((1, 0), (0, 2))),
     (1, 4, 4, 4)),
    ("conv transpose valid nobias", lambda: L.Conv2DTranspose(2, 1, stride=3, use_bias=False),
     (2, 2, 3, 2)),
    ("depthwise", lambda: L.DepthwiseConv2D(3, padding="same", depth_multiplier=2), (2, 5, 4, 3)),
    ("depthwise stride elu", lambda: L.DepthwiseConv2D((2, 3), stride=2, activation="elu"),
     (2, 6, 7, 2)),
    ("upsample nearest", lambda: L.UpSampling2D((2, 3)), (2, 3, 2, 2)),
    ("upsample bilinear", lambda: L.UpSampling2D(3, interpolation="bilinear"), (2, 3, 4, 2)),
    ("zero padding", lambda: L.ZeroPadding2D(((1, 0), (2, 3))), (2, 3, 2, 2)),
    ("cropping", lambda: L.Cropping2D((1, 2)), (2, 4, 5, 2)),
    ("cropping asymmetric", lambda: L.Cropping2D(((1, 0), (2, 1))), (2, 4, 5, 2)),
    ("global max", lambda: L.GlobalMaxPool2D(), (3, 4, 5, 2)),
    ("reshape", lambda: L.Reshape((-1, 4)), (2, 3, 4, 2)),
    ("reshape flat", lambda: L.Reshape(24), (2, 3, 4, 2)),
    ("gelu", lambda: L.GELU(), (3, 4, 5)),
    ("gelu tanh", lambda: L.GELU(approximate=True), (3, 4, 5)),
    ("silu", lambda: L.SiLU(), (3, 7)),
    ("elu", lambda: L.ELU(0.7), (3, 7)),
    ("conv2d silu", lambda: L.Conv2D(3, 3, activation="swish"), (2, 5, 5, 2)),
    ("dense gelu", lambda: L.Dense(4, activation="gelu"), (3, 5)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_gradients_by_finite_differences(name, make, shape):
    layer = make()
    layer.build(shape[1:], np.random.default_rng(1), np.float64)
    for p in layer.params.values():
        p[...] = rand(p.shape, seed=2)
    report = cconv.gradcheck(layer, rand(shape, seed=3), rtol=1e-6, atol=1e-8)
    assert report.ok, str(report)
    assert {r.name for r in report.results} == {"x"} | set(layer.params)


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_shapes_dtypes_and_config(name, make, shape):
    layer = make()
    layer.name = "mine"
    for dtype in DTYPES:
        x = rand(shape, dtype, 1)
        y = layer.forward(x, training=True)
        assert y.shape == (shape[0],) + layer.output_shape(shape[1:])
        assert y.dtype == dtype and layer.backward(np.ones_like(y)).shape == x.shape
        layer.built = False                                  # rebuild in the other dtype
    d = json.loads(json.dumps(L.serialize(layer)))
    clone = L.deserialize(d)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    assert repr(clone) == repr(layer)
    layer.build(shape[1:], np.random.default_rng(5), np.float64)
    clone.build(shape[1:], np.random.default_rng(5), np.float64)
    x = rand(shape, np.float64, 2)
    np.testing.assert_array_equal(layer.forward(x), clone.forward(x))


def test_layer_inputs_are_not_modified_and_need_input_grad():
    for _, make, shape in LAYERS:
        layer = make()
        x = rand(shape, seed=1)
        x0 = x.copy()
        y = layer.forward(x, training=True)
        layer.backward(np.ones_like(y))
        np.testing.assert_array_equal(x, x0)
        layer.need_input_grad = False
        layer.forward(x, training=True)
        assert layer.backward(np.ones_like(y)) is None


def test_keras_aliases_and_activation_strings():
    for alias, cls in [("GlobalMaxPooling2D", L.GlobalMaxPool2D), ("Swish", L.SiLU),
                       ("Convolution2DTranspose", L.Conv2DTranspose)]:
        assert type(L.deserialize({"class_name": alias, "config": (
            {"filters": 2, "kernel_size": 3} if cls is L.Conv2DTranspose else {})})) is cls
    assert L.GlobalMaxPooling2D is L.GlobalMaxPool2D and L.Swish is L.SiLU
    for name, cls in [("gelu", L.GELU), ("silu", L.SiLU), ("swish", L.SiLU), ("elu", L.ELU),
                      ("GELU", L.GELU)]:
        assert type(L.get_activation(name)) is cls
    assert L.Conv2D(3, 3, activation="swish").get_config()["activation"] == "silu"
    conv = L.Conv2D(3, 3, activation=L.GELU(approximate="tanh"))
    clone = L.Conv2D.from_config(json.loads(json.dumps(conv.get_config())))
    assert isinstance(clone.activation, L.GELU) and clone.activation.approximate == "tanh"
    assert L.ELU(alpha=0.5).get_config()["alpha"] == 0.5


def test_fused_activation_equals_a_separate_layer():
    """Fused into Conv2DTranspose, an activation whose slope needs its input (GELU) gives the
    same output and gradients as a separate layer after the convolution."""
    x = rand((2, 4, 4, 3), seed=1)
    for act in ("gelu", "silu", "elu"):
        fused = L.Conv2DTranspose(2, 3, stride=2, activation=act)
        plain = L.Conv2DTranspose(2, 3, stride=2)
        sep = L.get_activation(act)
        for layer in (fused, plain):
            layer.build(x.shape[1:], np.random.default_rng(0), np.float64)
        y1 = fused.forward(x, training=True)
        y2 = sep.forward(plain.forward(x, training=True), training=True)
        np.testing.assert_array_equal(y1, y2)
        dy = rand(y1.shape, seed=2)
        np.testing.assert_array_equal(fused.backward(dy), plain.backward(sep.backward(dy)))
        np.testing.assert_array_equal(fused.grads["kernel"], plain.grads["kernel"])


def test_activation_values():
    x = np.array([[-3.0, -1.0, 0.0, 0.5, 2.0]])
    phi = np.array([0.0013498980316301, 0.15865525393145707, 0.5, 0.6914624612740131,
                    0.9772498680518208])                    # standard normal CDF
    np.testing.assert_allclose(L.GELU().forward(x), x * phi, rtol=1e-13)
    np.testing.assert_allclose(L.SiLU().forward(x), x / (1 + np.exp(-x)), rtol=1e-13)
    np.testing.assert_allclose(L.ELU(2.0).forward(x), np.where(x > 0, x, 2 * np.expm1(x)),
                               rtol=1e-13)
    t = np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))
    np.testing.assert_allclose(L.GELU(approximate="tanh").forward(x), 0.5 * x * (1 + t),
                               rtol=1e-13)
    nan = L.ELU().forward(np.array([[np.nan, -np.inf, np.inf]]))
    assert np.isnan(nan[0, 0]) and nan[0, 1] == -1 and nan[0, 2] == np.inf


def test_global_max_pool_routes_the_gradient_to_the_first_maximum():
    x = np.zeros((1, 3, 3, 2))
    x[0, 1, 2, 0] = x[0, 2, 0, 0] = 5.0               # a tie: (1, 2) comes first
    x[0, :, :, 1] = 1.0                               # all equal: (0, 0) wins
    x[0, 2, 2, 1] = np.nan                            # ... unless a NaN is present
    layer = L.GlobalMaxPool2D()
    y = layer.forward(x, training=True)
    assert y[0, 0] == 5.0 and np.isnan(y[0, 1])
    dx = layer.backward(np.array([[2.0, 3.0]]))
    assert dx[0, 1, 2, 0] == 2.0 and dx[0, :, :, 0].sum() == 2.0
    assert dx[0, 2, 2, 1] == 3.0 and dx[0, :, :, 1].sum() == 3.0


def test_depthwise_is_a_grouped_conv2d():
    """The documented kernel mapping: Keras's (KH, KW, C, m) is the grouped HWIO kernel
    (KH, KW, 1, C * m), output channel c * m + j."""
    x = rand((2, 5, 6, 3), seed=1)
    dw = L.DepthwiseConv2D(3, depth_multiplier=2, padding=1)
    dw.build(x.shape[1:], np.random.default_rng(0), np.float64)
    conv = L.Conv2D(6, 3, padding=1, groups=3)
    conv.build(x.shape[1:], np.random.default_rng(0), np.float64)
    conv.params["kernel"][...] = dw.params["kernel"].reshape(3, 3, 1, 6)
    np.testing.assert_array_equal(dw.forward(x), conv.forward(x))
    k = dw.params["kernel"]
    for c in range(3):
        np.testing.assert_allclose(dw.forward(x)[..., 2 * c:2 * c + 2],
                                   R.conv2d(x[..., [c]], k[:, :, [c], :], padding=1), rtol=1e-12)
    assert dw.count_params() == 3 * 3 * 3 * 2 + 6
    # He initialisation over one depthwise filter: fan_in = KH * KW
    big = L.DepthwiseConv2D(3)
    big.build((4, 4, 256), np.random.default_rng(0), np.float64)
    assert abs(big.params["kernel"].std() - np.sqrt(2 / 9)) < 0.02


BAD_HYPER = [
    (lambda: L.Conv2DTranspose(0, 3), ValueError, "filters.*0"),
    (lambda: L.Conv2DTranspose(4, 3, stride=2, output_padding=2), ValueError,
     r"output_padding.*\(2, 2\).*stride \(2, 2\)"),
    (lambda: L.Conv2DTranspose(4, 3, output_padding=(0, -1)), ValueError,
     r"output_padding.*\(0, -1\)"),
    (lambda: L.Conv2DTranspose(4, 3, groups=3), ValueError, r"filters \(4\).*groups \(3\)"),
    (lambda: L.Conv2DTranspose(4, 3, padding="full"), ValueError, "full"),
    (lambda: L.Conv2DTranspose(4.0, 3), TypeError, "filters.*4.0"),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=0), ValueError, "depth_multiplier.*0"),
    (lambda: L.DepthwiseConv2D(0), ValueError, "kernel_size.*0"),
    (lambda: L.DepthwiseConv2D(3, stride=(1, 0)), ValueError, r"stride.*\(1, 0\)"),
    (lambda: L.UpSampling2D(0), ValueError, "size.*0"),
    (lambda: L.UpSampling2D(2, interpolation="bicubic"), ValueError, "interpolation.*bicubic"),
    (lambda: L.UpSampling2D(2.5), TypeError, r"size.*2\.5"),
    (lambda: L.ZeroPadding2D(-1), ValueError, "padding.*-1"),
    (lambda: L.ZeroPadding2D(((1, 2), (3,))), ValueError, "padding"),
    (lambda: L.Cropping2D((1, -2)), ValueError, r"cropping.*\(1, -2\)"),
    (lambda: L.Cropping2D("same"), TypeError, "cropping.*same"),
    (lambda: L.Reshape((2, -1, -1)), ValueError, r"target_shape.*\(2, -1, -1\)"),
    (lambda: L.Reshape((2, 0)), ValueError, r"target_shape.*\(2, 0\)"),
    (lambda: L.Reshape((2, 2.5)), TypeError, r"target_shape.*2\.5"),
    (lambda: L.Reshape(()), ValueError, "target_shape"),
    (lambda: L.GELU(approximate="erf"), ValueError, "approximate.*erf"),
    (lambda: L.ELU(-1.0), ValueError, r"alpha.*-1\.0"),
    (lambda: L.ELU("1"), TypeError, "alpha"),
    (lambda: L.get_activation("mish"), ValueError, "mish.*gelu"),
]


@pytest.mark.parametrize("make,exc,match", BAD_HYPER)
def test_bad_hyper_parameters_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("make,shape,match", [
    (lambda: L.Cropping2D(((2, 2), (0, 0)), name="crop"), (4, 4, 1),
     r"crop: cropping \(\(2, 2\), \(0, 0\)\).*\(4, 4, 1\)"),
    (lambda: L.Reshape((5, -1), name="rs"), (3, 4, 1), r"rs:.*\(3, 4, 1\).*12 values.*\(5, -1\)"),
    (lambda: L.Reshape((5, 2), name="rs"), (3, 4, 1), r"rs:.*\(3, 4, 1\).*\(5, 2\).*10 values"),
    (lambda: L.Conv2DTranspose(2, 3, padding=4, name="up"), (2, 2, 1), r"up:.*\(2, 2, 1\)"),
    (lambda: L.Conv2DTranspose(2, 3, groups=2, name="up"), (4, 4, 3), r"up:.*channels \(3"),
    (lambda: L.DepthwiseConv2D(5, name="dw"), (4, 4, 1), r"dw:.*kernel \(5, 5\)"),
    (lambda: L.UpSampling2D(name="us"), (4, 4), r"us:.*4-D.*\(None, 4, 4\)"),
])
def test_bad_input_shapes_name_the_layer(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make().output_shape(shape)
    with pytest.raises(ValueError, match=match.split(":")[0]):
        make().forward(rand((2,) + shape))


def test_conv2d_transpose_channels_are_fixed_once_built():
    layer = L.Conv2DTranspose(2, 3, name="up")
    layer.build((4, 4, 3), np.random.default_rng(0))
    assert layer.params["kernel"].shape == (3, 3, 2, 3)
    with pytest.raises(ValueError, match=r"up.*\(2, 4, 4, 5\)"):
        layer.forward(rand((2, 4, 4, 5)))
    assert layer.output_shape((7, 5, 3)) == (9, 7, 2)


def test_a_model_of_the_new_layers_trains_saves_and_loads(tmp_path):
    """Every new layer in one Sequential: fit, save/load gives identical predictions, and the
    model's gradients pass a finite-difference check."""
    model = cconv.Sequential([
        L.Conv2D(8, 3, padding="same", activation="gelu"),
        L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="silu"),
        L.MaxPool2D(2),
        L.Conv2DTranspose(8, 3, stride=2, padding="same", activation="elu"),
        L.ZeroPadding2D(1), L.Cropping2D(((1, 1), (0, 2))),
        L.UpSampling2D(2, interpolation="bilinear"),
        L.GlobalMaxPool2D(), L.Reshape((2, -1)), L.Flatten(), L.Dense(3, activation="softmax"),
    ], input_shape=(8, 8, 1), seed=0)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    y = np.arange(16) % 3
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "m.npz")
    again = cconv.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(model.predict(x), again.predict(x))
    assert cconv.gradcheck(model, x[:2], max_elements=8).ok
