"""Parity with PyTorch for the layers of issue 13: Conv2DTranspose (every route it takes,
1 and 2 threads), DepthwiseConv2D, UpSampling2D, ZeroPadding2D, Cropping2D, GlobalMaxPool2D
and the GELU, SiLU and ELU activations: forward, dx and every parameter gradient."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import cconv  # noqa: E402
from cconv import functional as F, layers as L  # noqa: E402
from cconv._testing import forced  # noqa: E402

from conftest import spy_calls  # noqa: E402

TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}
DTYPES = [np.float32, np.float64]


def rand(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), requires_grad=True)


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def param(a):
    return torch.tensor(np.ascontiguousarray(a), requires_grad=True)


def run(layer, x, seed=2):
    """forward (training, cached) and backward with a random dy; returns y, dy, dx."""
    y = layer.forward(x, training=True)
    dy = rand(y.shape, x.dtype, seed)
    return y, dy, layer.backward(dy)


def torch_backward(yt, dy):
    yt.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2) if dy.ndim == 4
                                                  else dy)))


def close(a, b, dtype, what=""):
    np.testing.assert_allclose(a, b, err_msg=what, **TOL[dtype])


# ---------------------------------------------------------------------------------
# Conv2DTranspose
# ---------------------------------------------------------------------------------
def torch_conv_transpose(x, w, b, stride, pads, op, dilation, groups):
    """PyTorch's conv_transpose2d with explicit (possibly asymmetric) pads: PyTorch pads
    symmetrically, so pad by the smaller side and crop the rest."""
    xt, wt, bt = nchw(x), param(w.transpose(3, 2, 0, 1)), param(b)
    (pt, pb), (pl, pr) = pads
    ph, pw = min(pt, pb), min(pl, pr)
    yt = TF.conv_transpose2d(xt, wt, bt, stride, (ph, pw), op, groups, dilation)
    H, W = yt.shape[2:]
    yt = yt[:, :, pt - ph:H - (pb - ph), pl - pw:W - (pr - pw)]
    return xt, wt, bt, yt


# filters, kernel, stride, padding, output_padding, dilation, groups, input (N, H, W, C),
# the same padding in explicit PyTorch terms (pads, output_padding)
TRANSPOSE_CASES = [
    (4, 3, 1, 0, None, 1, 1, (2, 5, 6, 3), ((0, 0), (0, 0)), 0),
    (5, 3, 2, 1, 1, 1, 1, (2, 5, 4, 3), ((1, 1), (1, 1)), 1),
    (6, (2, 3), (2, 3), (1, 0), (1, 2), 1, 1, (2, 4, 5, 2), ((1, 1), (0, 0)), (1, 2)),
    (6, 3, 2, 0, 1, 1, 2, (2, 5, 6, 4), ((0, 0), (0, 0)), 1),        # groups
    (4, 3, 1, 1, 1, 2, 1, (2, 5, 5, 3), ((1, 1), (1, 1)), 1),        # op < dilation
    (3, 3, 1, 3, 0, 1, 1, (2, 8, 7, 2), ((3, 3), (3, 3)), 0),        # pad > kernel - 1
    (4, 2, 3, ((2, 0), (0, 1)), (0, 2), 1, 1, (1, 6, 5, 4), ((2, 0), (0, 1)), (0, 2)),
    (4, 1, 2, 0, 1, 1, 1, (2, 3, 3, 2), ((0, 0), (0, 0)), 1),        # 1x1, rows only from op
    # The strings: Keras's sizes, TensorFlow's pads (these PyTorch equivalents were checked
    # against Keras 3.15.1 on TensorFlow 2.21, the same cases, all within 2e-7 in float32)
    (3, 3, 2, "same", None, 1, 1, (2, 5, 4, 3), ((0, 1), (0, 1)), 0),   # Keras: H * stride
    (3, 4, 2, "same", None, 1, 1, (2, 5, 4, 3), ((1, 1), (1, 1)), 0),
    (3, 5, 2, "same", None, 1, 1, (2, 5, 4, 3), ((1, 2), (1, 2)), 0),   # odd pad at the bottom
    (3, 3, 2, "valid", None, 1, 1, (2, 5, 4, 3), ((0, 0), (0, 0)), 0),
    (3, 1, 3, "valid", None, 1, 1, (2, 3, 4, 3), ((0, 0), (0, 0)), 2),  # Keras: max(k, s)
    (3, 3, 1, "same", None, 1, 1, (2, 5, 4, 3), ((1, 1), (1, 1)), 0),
    (3, 3, 2, "same", 0, 1, 1, (2, 5, 4, 3), ((1, 1), (1, 1)), 0),      # Keras: (H-1)s + 1
    (3, 4, 2, "same", 1, 1, 1, (2, 5, 4, 3), ((1, 2), (1, 2)), 0),
    (3, 2, 3, "valid", 1, 1, 1, (2, 5, 4, 3), ((0, 0), (0, 0)), 1),
    (3, 5, 3, "same", None, 1, 1, (2, 5, 4, 3), ((1, 1), (1, 1)), 0),
    (4, 3, 1, 1, 0, 1, 4, (2, 6, 6, 4), ((1, 1), (1, 1)), 0),           # depthwise-like
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv2d_transpose(case, dtype):
    filters, k, s, p, op, d, g, shape, pads, top = case
    layer = L.Conv2DTranspose(filters, k, stride=s, padding=p, output_padding=op, dilation=d,
                              groups=g)
    layer.build(shape[1:], np.random.default_rng(0), dtype)
    layer.params["bias"][...] = rand((filters,), dtype, seed=5)
    x = rand(shape, dtype, seed=1)
    y, dy, dx = run(layer, x)
    xt, wt, bt, yt = torch_conv_transpose(x, layer.params["kernel"], layer.params["bias"], s,
                                          pads, top, d, g)
    torch_backward(yt, dy)
    assert y.shape == (shape[0],) + layer.output_shape(shape[1:]) == to_nhwc(yt).shape
    close(y, to_nhwc(yt), dtype, "y")
    close(dx, to_nhwc(xt.grad), dtype, "dx")
    close(layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), dtype, "dw")
    close(layer.grads["bias"], bt.grad.numpy(), dtype, "db")


@pytest.fixture
def routes(monkeypatch):
    """Counts of the compiled kernels called, and the thread counts they were given."""
    names = ["conv2d_forward", "conv2d_backward", "winograd_forward", "winograd_backward",
             "direct_forward", "direct_backward_weights", "col2im", "matmul"]
    threads = {}
    counts = dict.fromkeys(names, 0)
    for name in names:
        fn = getattr(F._core, name)

        def spy(*args, _fn=fn, _name=name):
            counts[_name] += 1
            threads.setdefault(_name, set()).add(args[-1])
            return _fn(*args)

        monkeypatch.setattr(F._core, name, spy)
    return counts, threads


# stride, padding, input (N, H, W, C_in), filters, dtype, kernels each pass must call.
# The inputs are large enough (MIN_WORK_PER_THREAD) for every kernel to run 2 threads.
ROUTE_CASES = [
    ("winograd", 1, 1, (4, 16, 16, 32), 32, np.float64,
     {"winograd_forward": 2, "winograd_backward": 1}),
    ("im2col", 1, 1, (4, 18, 18, 8), 12, np.float64,
     {"conv2d_forward": 2, "conv2d_backward": 1}),
    ("col2im", 2, 1, (4, 16, 16, 8), 16, np.float64,
     {"matmul": 1, "col2im": 1, "conv2d_forward": 1, "conv2d_backward": 1}),
    ("col2im f32", 2, 0, (4, 12, 14, 16), 24, np.float32,
     {"matmul": 1, "col2im": 1, "conv2d_forward": 1, "conv2d_backward": 1}),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_conv2d_transpose_routes_and_threads(case, threads, routes, restore_threads):
    _, s, p, shape, filters, dtype, expected = case
    counts, used = routes
    cconv.set_num_threads(threads)
    layer = L.Conv2DTranspose(filters, 3, stride=s, padding=p)
    layer.build(shape[1:], np.random.default_rng(0), dtype)
    layer.params["bias"][...] = rand((filters,), dtype, seed=5)
    x = rand(shape, dtype, seed=1)
    y, dy, dx = run(layer, x)
    assert {k: v for k, v in counts.items() if v} == expected
    assert all(used[k] == {threads} for k in expected), used
    xt, wt, bt, yt = torch_conv_transpose(x, layer.params["kernel"], layer.params["bias"], s,
                                          ((p, p), (p, p)), 0, 1, 1)
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), dtype, "y")
    close(dx, to_nhwc(xt.grad), dtype, "dx")
    close(layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), dtype, "dw")
    close(layer.grads["bias"], bt.grad.numpy(), dtype, "db")


def test_conv2d_transpose_chunks_and_groups_on_two_threads(monkeypatch, routes, restore_threads):
    """The stride > 1 route in several chunks of images (the last one partial), grouped."""
    counts, used = routes
    cconv.set_num_threads(2)
    monkeypatch.setattr(F, "TRANSPOSE_CHUNK_BYTES", 1)          # nt = 2 images per chunk
    x, w, b = rand((5, 9, 8, 6), seed=1), rand((3, 3, 4, 6), seed=2), rand((8,), seed=3)
    y = F.conv2d_transpose(x, w, b, stride=2, padding=1, output_padding=1, groups=2)
    assert counts["col2im"] == 3 and counts["matmul"] == 6
    xt, wt, bt, yt = torch_conv_transpose(x, w, b, 2, ((1, 1), (1, 1)), 1, 1, 2)
    close(y, to_nhwc(yt), np.float64)


@pytest.mark.skipif(F._core.simd_level() < 1 or F.DIRECT_MAX_K is None,
                    reason="the direct route needs AVX2 or AVX-512")
@pytest.mark.parametrize("cin,filters,kernel", [(3, 16, "direct_forward"),
                                                (16, 3, "direct_backward_weights")])
def test_conv2d_transpose_direct_route(cin, filters, kernel, routes):
    """float32, stride 1: the forward is a convolution over x's channels (direct when
    9 * C_in <= 32), the weight gradient one over dy's (direct when 9 * filters <= 32)."""
    counts, _ = routes
    layer = L.Conv2DTranspose(filters, 3, padding=1)
    x = rand((2, 9, 8, cin), np.float32, seed=1)
    layer.build(x.shape[1:], np.random.default_rng(0), np.float32)
    y, dy, dx = run(layer, x)
    assert counts[kernel] == 1
    xt, wt, bt, yt = torch_conv_transpose(x, layer.params["kernel"], layer.params["bias"], 1,
                                          ((1, 1), (1, 1)), 0, 1, 1)
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), np.float32)
    close(dx, to_nhwc(xt.grad), np.float32)
    close(layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), np.float32)
    close(layer.grads["bias"], bt.grad.numpy(), np.float32)


def test_conv2d_transpose_with_fused_activation():
    layer = L.Conv2DTranspose(4, 3, stride=2, padding="same", activation="gelu")
    x = rand((2, 4, 5, 3), seed=1)
    layer.build(x.shape[1:], np.random.default_rng(0), np.float64)
    y, dy, dx = run(layer, x)
    xt, wt, bt, yt = torch_conv_transpose(x, layer.params["kernel"], layer.params["bias"], 2,
                                          ((0, 1), (0, 1)), 0, 1, 1)
    yt = TF.gelu(yt)
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), np.float64)
    close(dx, to_nhwc(xt.grad), np.float64)
    close(layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), np.float64)


# ---------------------------------------------------------------------------------
# DepthwiseConv2D
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,m,d,shape", [
    (3, 1, "valid", 1, 1, (2, 6, 5, 3)),
    (3, 2, "same", 2, 1, (2, 7, 8, 4)),
    ((2, 3), (1, 2), ((1, 0), (2, 1)), 3, (2, 1), (1, 7, 6, 2)),
    (1, 1, 0, 2, 1, (2, 3, 3, 5)),
    (3, 2, ((2, 1), (2, 2)), 2, 2, (2, 9, 8, 8)),
    (3, 1, "same", 1, 1, (3, 8, 8, 16)),
])
@pytest.mark.parametrize("route", ["auto", "depthwise"])
def test_depthwise_conv2d(k, s, p, m, d, shape, dtype, route):
    C = shape[3]
    layer = L.DepthwiseConv2D(k, stride=s, padding=p, depth_multiplier=m, dilation=d,
                              activation="silu")
    layer.build(shape[1:], np.random.default_rng(0), dtype)
    layer.params["bias"][...] = rand((C * m,), dtype, seed=5)
    x = rand(shape, dtype, seed=1)
    with forced(conv=route):
        y, dy, dx = run(layer, x)
    kernel = layer.params["kernel"]
    KH, KW = kernel.shape[:2]
    xt = nchw(x)
    wt = param(kernel.reshape(KH, KW, 1, C * m).transpose(3, 2, 0, 1))   # documented mapping
    bt = param(layer.params["bias"])
    if isinstance(p, str):
        xp, pt = xt, p
        if p == "same" and s != 1:     # TensorFlow's "same": 7 -> pads (1, 1), 8 -> (0, 1)
            xp, pt = TF.pad(xt, (0, 1, 1, 1)), 0
    elif isinstance(p, tuple) and isinstance(p[0], tuple):
        xp, pt = TF.pad(xt, (p[1][0], p[1][1], p[0][0], p[0][1])), 0
    else:
        xp, pt = xt, p
    yt = TF.silu(TF.conv2d(xp, wt, bt, stride=s, padding=pt, dilation=d, groups=C))
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), dtype, "y")
    close(dx, to_nhwc(xt.grad), dtype, "dx")
    dw = wt.grad.numpy().transpose(2, 3, 1, 0).reshape(KH, KW, C, m)
    close(layer.grads["kernel"], dw, dtype, "dw")
    close(layer.grads["bias"], bt.grad.numpy(), dtype, "db")


# ---------------------------------------------------------------------------------
# Resampling, padding, cropping, global max pooling
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size,shape", [(2, (2, 5, 4, 3)), ((3, 2), (1, 3, 7, 2)),
                                        ((1, 4), (2, 1, 3, 2)), (3, (1, 1, 1, 2))])
def test_upsampling(mode, size, shape, dtype):
    layer = L.UpSampling2D(size, interpolation=mode)
    x = rand(shape, dtype, seed=1)
    y, dy, dx = run(layer, x)
    xt = nchw(x)
    sz = size if isinstance(size, tuple) else (size, size)
    kw = {} if mode == "nearest" else {"align_corners": False}
    yt = TF.interpolate(xt, scale_factor=sz, mode=mode, **kw)
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), dtype, "y")
    close(dx, to_nhwc(xt.grad), dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arg,tb_lr", [(1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))),
                                       (((0, 3), (2, 1)), ((0, 3), (2, 1)))])
def test_zero_padding_and_cropping(arg, tb_lr, dtype):
    (t, b), (l, r) = tb_lr
    x = rand((2, 6, 7, 3), dtype, seed=1)
    y, dy, dx = run(L.ZeroPadding2D(arg), x)
    xt = nchw(x)
    yt = TF.pad(xt, (l, r, t, b))
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), dtype)
    close(dx, to_nhwc(xt.grad), dtype)

    y, dy, dx = run(L.Cropping2D(arg), x)
    xt = nchw(x)
    yt = xt[:, :, t:6 - b, l:7 - r]
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), dtype)
    close(dx, to_nhwc(xt.grad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
def test_global_max_pool(ties, dtype):
    shape = (3, 5, 7, 4)
    x = rand(shape, dtype, seed=1)
    if ties:                        # many equal maxima: the first one (row-major) wins
        x = np.round(x).clip(-1, 1).astype(dtype)
    layer = L.GlobalMaxPool2D()
    y, dy, dx = run(layer, x)
    xt = nchw(x)
    yt = TF.max_pool2d(xt, shape[1:3]).flatten(1)
    torch_backward(yt, dy)
    close(y, yt.detach().numpy(), dtype)
    close(dx, to_nhwc(xt.grad), dtype)


# ---------------------------------------------------------------------------------
# Activations: layers, and fused into Conv2D / Dense
# ---------------------------------------------------------------------------------
ACTIVATIONS = [
    ("gelu", lambda: L.GELU(), lambda t: TF.gelu(t)),
    ("gelu tanh", lambda: L.GELU(approximate="tanh"), lambda t: TF.gelu(t, approximate="tanh")),
    ("silu", lambda: L.SiLU(), TF.silu),
    ("swish", lambda: L.Swish(), TF.silu),
    ("elu", lambda: L.ELU(), TF.elu),
    ("elu 0.3", lambda: L.ELU(0.3), lambda t: TF.elu(t, alpha=0.3)),
    ("elu 0", lambda: L.ELU(0.0), lambda t: TF.elu(t, alpha=0.0)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,make,fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_layers(name, make, fn, dtype):
    x = rand((3, 4, 5, 6), dtype, seed=1) * 3
    x[0, 0, 0, :3] = [0.0, -30.0, 30.0]            # the kink, and both tails
    y, dy, dx = run(make(), x)
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dy))
    close(y, yt.detach().numpy(), dtype, "y")
    close(dx, xt.grad.numpy(), dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["gelu", "silu", "swish", "elu"])
def test_activation_strings_fused_into_conv_and_dense(act, dtype):
    fn = {"gelu": TF.gelu, "silu": TF.silu, "swish": TF.silu, "elu": TF.elu}[act]
    conv = L.Conv2D(4, 3, padding=1, activation=act)
    x = rand((2, 5, 5, 3), dtype, seed=1)
    conv.build(x.shape[1:], np.random.default_rng(0), dtype)
    conv.params["bias"][...] = rand((4,), dtype, seed=4)
    y, dy, dx = run(conv, x)
    xt = nchw(x)
    wt, bt = param(conv.params["kernel"].transpose(3, 2, 0, 1)), param(conv.params["bias"])
    yt = fn(TF.conv2d(xt, wt, bt, padding=1))
    torch_backward(yt, dy)
    close(y, to_nhwc(yt), dtype)
    close(dx, to_nhwc(xt.grad), dtype)
    close(conv.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), dtype)
    close(conv.grads["bias"], bt.grad.numpy(), dtype)

    dense = L.Dense(5, activation=act)
    x = rand((4, 6), dtype, seed=2)
    dense.build((6,), np.random.default_rng(0), dtype)
    y, dy, dx = run(dense, x)
    xt, wt = torch.tensor(x, requires_grad=True), param(dense.params["kernel"])
    yt = fn(xt @ wt)
    yt.backward(torch.tensor(dy))
    close(y, yt.detach().numpy(), dtype)
    close(dx, xt.grad.numpy(), dtype)
    close(dense.grads["kernel"], wt.grad.numpy(), dtype)
