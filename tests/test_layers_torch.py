"""Parity with PyTorch: layers (forward and backward), losses, optimizers and schedules."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

from cconv import layers as L, losses, optim  # noqa: E402

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), requires_grad=True)


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def rand(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run_layer(layer, x, dy, training=True):
    y = layer.forward(x, training=training, cache=True)
    dx = layer.backward(dy)
    return y, dx


# ---------------------------------------------------------------------------------
# Conv2D
# ---------------------------------------------------------------------------------
CONV_CASES = [
    # filters, kernel, stride, padding, dilation, groups, input (N, H, W, C)
    (8, 3, 1, "valid", 1, 1, (2, 9, 8, 3)),
    (6, 3, 1, "same", 1, 1, (2, 7, 7, 3)),
    (4, (3, 2), (2, 1), (1, 2), 1, 1, (3, 9, 8, 2)),
    (6, 3, 2, 1, 2, 1, (2, 11, 10, 3)),
    (8, 3, 1, 1, 1, 2, (2, 6, 6, 4)),
    (6, 3, 1, 0, 1, 3, (1, 5, 5, 3)),            # depthwise with multiplier 2
    (4, 1, 1, 0, 1, 1, (2, 4, 4, 5)),
    (5, 2, 3, 0, (1, 2), 1, (2, 10, 12, 3)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, dtype):
    filters, k, s, p, d, g, shape = case
    layer = L.Conv2D(filters, k, stride=s, padding=p, dilation=d, groups=g)
    layer.build(shape[1:], np.random.default_rng(0), dtype)
    layer.params["bias"][...] = rand((filters,), dtype, seed=5)
    x = rand(shape, dtype, seed=1)
    y = layer.forward(x, training=True)
    dy = rand(y.shape, dtype, seed=2)
    dx = layer.backward(dy)

    xt = nchw(x)
    wt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1).copy(), requires_grad=True)
    bt = torch.tensor(layer.params["bias"].copy(), requires_grad=True)
    pt = p if isinstance(p, str) else (p if isinstance(p, tuple) else (p, p))
    yt = TF.conv2d(xt, wt, bt, stride=s, padding=pt, dilation=d, groups=g)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    tol = TOL[dtype]
    np.testing.assert_allclose(y, to_nhwc(yt), **tol)
    np.testing.assert_allclose(dx, to_nhwc(xt.grad), **tol)
    np.testing.assert_allclose(layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), **tol)
    np.testing.assert_allclose(layer.grads["bias"], bt.grad.numpy(), **tol)


def test_conv2d_same_with_stride_pads_like_tensorflow():
    layer = L.Conv2D(3, 3, stride=2, padding="same", activation="relu")
    x = rand((2, 8, 7, 2))
    layer.build(x.shape[1:], np.random.default_rng(0), np.float64)
    y, dx = run_layer(layer, x, rand((2, 4, 4, 3), seed=3))
    xt = nchw(x)
    wt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1).copy())
    # TensorFlow's rule: total padding (out-1)*s + k - size, the odd pixel at the bottom/right
    yt = TF.relu(TF.conv2d(TF.pad(xt, (1, 1, 0, 1)), wt, stride=2))
    yt.backward(torch.tensor(rand((2, 4, 4, 3), seed=3).transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, to_nhwc(yt), rtol=1e-12)
    np.testing.assert_allclose(dx, to_nhwc(xt.grad), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------
# Pools, dense, flatten
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p,shape", [(2, None, 0, (2, 8, 8, 3)), (3, 2, 1, (2, 9, 7, 4)),
                                         ((2, 3), (1, 2), (1, 1), (1, 6, 9, 2))])
def test_pools(kind, k, s, p, shape, dtype):
    layer = (L.MaxPool2D if kind == "max" else L.AvgPool2D)(k, stride=s, padding=p)
    x = rand(shape, dtype, seed=4)
    y = layer.forward(x, training=True)
    dy = rand(y.shape, dtype, seed=5)
    dx = layer.backward(dy)
    xt = nchw(x)
    fn = TF.max_pool2d if kind == "max" else TF.avg_pool2d
    yt = fn(xt, k, stride=s if s is not None else k, padding=p)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, to_nhwc(yt), **TOL[dtype])
    np.testing.assert_allclose(dx, to_nhwc(xt.grad), **TOL[dtype])


def test_global_avg_pool():
    x = rand((3, 5, 4, 6))
    layer = L.GlobalAvgPool2D()
    y, dx = run_layer(layer, x, rand((3, 6), seed=1))
    xt = nchw(x)
    yt = TF.adaptive_avg_pool2d(xt, 1).flatten(1)
    yt.backward(torch.tensor(rand((3, 6), seed=1)))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, to_nhwc(xt.grad), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
def test_dense(activation, dtype):
    layer = L.Dense(7, activation=activation)
    layer.build((10,), np.random.default_rng(0), dtype)
    layer.params["bias"][...] = rand((7,), dtype, seed=6)
    x = rand((5, 10), dtype, seed=1)
    dy = rand((5, 7), dtype, seed=2)
    y, dx = run_layer(layer, x, dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["kernel"].T.copy(), requires_grad=True)
    bt = torch.tensor(layer.params["bias"].copy(), requires_grad=True)
    yt = TF.linear(xt, wt, bt)
    if activation:
        yt = getattr(torch, activation)(yt)
    yt.backward(torch.tensor(dy))
    tol = TOL[dtype]
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.grads["kernel"], wt.grad.numpy().T, **tol)
    np.testing.assert_allclose(layer.grads["bias"], bt.grad.numpy(), **tol)


def test_flatten_then_dense_matches_torch_on_nhwc_data():
    x = rand((2, 3, 4, 5))
    flat = L.Flatten()
    y = flat.forward(x)
    np.testing.assert_array_equal(y, torch.flatten(torch.tensor(x), 1).numpy())


# ---------------------------------------------------------------------------------
# Batch norm
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (10, 4)])
def test_batchnorm_training(shape):
    C = shape[-1]
    bn = L.BatchNorm2D(momentum=0.9, eps=1e-5)
    bn.build(shape[1:], np.random.default_rng(0), np.float64)
    gamma, beta = rand((C,), seed=1), rand((C,), seed=2)
    bn.params["gamma"][...] = gamma
    bn.params["beta"][...] = beta
    x = rand(shape, seed=3) * 2 + 1
    dy = rand(shape, seed=4)
    y, dx = run_layer(bn, x, dy, training=True)

    tbn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        C, eps=1e-5, momentum=0.1).double()
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(gamma))
        tbn.bias.copy_(torch.tensor(beta))
    tbn.train()
    xt = nchw(x) if len(shape) == 4 else torch.tensor(x, requires_grad=True)
    yt = tbn(xt)
    dyt = dy.transpose(0, 3, 1, 2).copy() if len(shape) == 4 else dy
    yt.backward(torch.tensor(dyt))
    back = to_nhwc if len(shape) == 4 else (lambda t: t.detach().numpy())
    np.testing.assert_allclose(y, back(yt), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, back(xt.grad), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bn.grads["gamma"], tbn.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.grads["beta"], tbn.bias.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.state["running_mean"], tbn.running_mean.numpy(), rtol=1e-12)
    # PyTorch keeps the unbiased batch variance in running_var; this layer the biased one
    M = x.size // C
    torch_batch_var = (tbn.running_var.numpy() - 0.9) / 0.1
    np.testing.assert_allclose(bn.state["running_var"], 0.9 + 0.1 * torch_batch_var * (M - 1) / M,
                               rtol=1e-12)


def test_batchnorm_inference():
    shape = (4, 3, 3, 5)
    bn = L.BatchNorm2D()
    bn.build(shape[1:], np.random.default_rng(0), np.float64)
    stats = {"gamma": rand((5,), seed=1), "beta": rand((5,), seed=2),
             "running_mean": rand((5,), seed=3), "running_var": np.linspace(0.5, 2, 5)}
    for k in ("gamma", "beta"):
        bn.params[k][...] = stats[k]
    for k in ("running_mean", "running_var"):
        bn.state[k][...] = stats[k]
    x, dy = rand(shape, seed=4), rand(shape, seed=5)
    y, dx = run_layer(bn, x, dy, training=False)
    tbn = torch.nn.BatchNorm2d(5).double()
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(stats["gamma"]))
        tbn.bias.copy_(torch.tensor(stats["beta"]))
        tbn.running_mean.copy_(torch.tensor(stats["running_mean"]))
        tbn.running_var.copy_(torch.tensor(stats["running_var"]))
    tbn.eval()
    xt = nchw(x)
    yt = tbn(xt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, to_nhwc(yt), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, to_nhwc(xt.grad), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(bn.grads["gamma"], tbn.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.grads["beta"], tbn.bias.grad.numpy(), rtol=1e-10)
    np.testing.assert_array_equal(bn.state["running_mean"], stats["running_mean"])


# ---------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer,fn", [
    (L.ReLU(), torch.relu), (L.LeakyReLU(0.2), lambda t: TF.leaky_relu(t, 0.2)),
    (L.LeakyReLU(), lambda t: TF.leaky_relu(t)), (L.Sigmoid(), torch.sigmoid),
    (L.Tanh(), torch.tanh), (L.Softmax(), lambda t: torch.softmax(t, -1)),
    (L.Softmax(axis=1), lambda t: torch.softmax(t, 1))], ids=lambda v: repr(v)[:20])
def test_activations(layer, fn, dtype):
    x = rand((4, 3, 6), dtype, seed=7) * 3
    x[0, 0, :2] = 0.0                   # the gradient at 0 follows PyTorch
    dy = rand(x.shape, dtype, seed=8)
    y, dx = run_layer(layer, x, dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL[dtype])


# ---------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ls", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("targets", ["int", "probs"])
def test_softmax_cross_entropy(ls, targets):
    rng = np.random.default_rng(9)
    z = rng.standard_normal((8, 6)) * 3
    if targets == "int":
        y = rng.integers(0, 6, 8)
        yt = torch.tensor(y)
    else:
        y = rng.dirichlet(np.ones(6), 8)
        yt = torch.tensor(y)
    loss = losses.SoftmaxCrossEntropy(label_smoothing=ls, from_logits=True)
    v = loss(z, y)
    g = loss.backward()
    zt = torch.tensor(z, requires_grad=True)
    lt = TF.cross_entropy(zt, yt, label_smoothing=ls)
    lt.backward()
    assert v == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(g, zt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_mean_squared_error():
    rng = np.random.default_rng(10)
    p, t = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    loss = losses.MeanSquaredError()
    v = loss(p, t)
    g = loss.backward()
    pt = torch.tensor(p, requires_grad=True)
    # E = 1/2 sum over outputs, mean over the batch = (D / 2) * torch's element mean
    lt = TF.mse_loss(pt, torch.tensor(t)) * 4 / 2
    lt.backward()
    assert v == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(g, pt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("from_logits", [True, False])
def test_binary_cross_entropy(from_logits):
    rng = np.random.default_rng(11)
    z = rng.standard_normal((6, 3)) * 4
    t = rng.uniform(0, 1, (6, 3))
    pred = z if from_logits else 1 / (1 + np.exp(-z))
    loss = losses.BinaryCrossEntropy(from_logits=from_logits)
    v = loss(pred, t)
    g = loss.backward()
    pt = torch.tensor(pred, requires_grad=True)
    fn = TF.binary_cross_entropy_with_logits if from_logits else TF.binary_cross_entropy
    lt = fn(pt, torch.tensor(t))
    lt.backward()
    assert v == pytest.approx(lt.item(), rel=1e-9)
    np.testing.assert_allclose(g, pt.grad.numpy(), rtol=1e-8)


# ---------------------------------------------------------------------------------
# Optimizers: parameters after 50 steps on the same gradients
# ---------------------------------------------------------------------------------
OPT_CASES = [
    (lambda: optim.SGD(lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    (lambda: optim.SGD(lr=0.05, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    (lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)),
    (lambda: optim.SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    (lambda: optim.SGD(lr=0.05, weight_decay=0.1),
     lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=0.1)),
    (lambda: optim.Adam(), lambda ps: torch.optim.Adam(ps)),
    (lambda: optim.Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05),
     lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    (lambda: optim.AdamW(), lambda ps: torch.optim.AdamW(ps)),
    (lambda: optim.AdamW(lr=0.01, weight_decay=0.1),
     lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    (lambda: optim.RMSprop(), lambda ps: torch.optim.RMSprop(ps)),
    (lambda: optim.RMSprop(lr=0.001, alpha=0.9, eps=1e-6, momentum=0.9, weight_decay=0.01),
     lambda ps: torch.optim.RMSprop(ps, lr=0.001, alpha=0.9, eps=1e-6, momentum=0.9,
                                    weight_decay=0.01)),
    (lambda: optim.SGD(lr=0.1, momentum=0.9, clipnorm=1.0), "clip"),
    (lambda: optim.Adam(lr=0.01, clipnorm=0.5), "clip"),
]


@pytest.mark.parametrize("make,make_torch", OPT_CASES)
def test_optimizer_after_50_steps(make, make_torch):
    rng = np.random.default_rng(12)
    shapes = [(3, 3, 2, 4), (4,), (10, 3)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [np.zeros(s) for s in shapes]
    opt = make()
    opt.attach([(f"p{i}", p, g) for i, (p, g) in enumerate(zip(params, grads))])
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    if make_torch == "clip":
        cfg = opt.get_config()
        clip = cfg.pop("clipnorm")
        if isinstance(opt, optim.SGD):
            topt = torch.optim.SGD(tparams, lr=cfg["lr"], momentum=cfg["momentum"])
        else:
            topt = torch.optim.Adam(tparams, lr=cfg["lr"])
    else:
        clip = None
        topt = make_torch(tparams)
    for _ in range(50):
        gs = [rng.standard_normal(s) * 2 for s in shapes]
        for g, gi in zip(grads, gs):
            g[...] = gi
        for t, gi in zip(tparams, gs):
            t.grad = torch.tensor(gi)
        opt.step()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(tparams, clip)
        topt.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-6, atol=1e-10)


def test_adam_float32_close_to_torch_float32():
    rng = np.random.default_rng(13)
    p = rng.standard_normal(100).astype(np.float32)
    g = np.zeros_like(p)
    opt = optim.Adam(lr=0.01)
    opt.attach([("w", p, g)])
    t = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.Adam([t], lr=0.01)
    for _ in range(50):
        gi = rng.standard_normal(100).astype(np.float32)
        g[...] = gi
        t.grad = torch.tensor(gi)
        opt.step()
        topt.step()
    np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ours,theirs", [
    (optim.StepLR(3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5)),
    (optim.ExponentialLR(0.8), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.8)),
    (optim.CosineAnnealingLR(5, eta_min=0.01),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5, eta_min=0.01)),
])
def test_schedules(ours, theirs):
    base = 0.1
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = theirs(topt)
    for epoch in range(6):
        assert ours(epoch, base) == pytest.approx(topt.param_groups[0]["lr"], rel=1e-10, abs=1e-15)
        topt.step()
        sched.step()


# ---------------------------------------------------------------------------------
# A residual block (functional graph, and the same block as one custom layer)
# ---------------------------------------------------------------------------------
class ResBlock(L.Layer):
    """relu(x + bn2(conv2(relu(bn1(conv1(x)))))) as a layer holding its sublayers."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.body = [L.Conv2D(filters, 3, padding="same", use_bias=False), L.BatchNorm2D(), L.ReLU(),
                     L.Conv2D(filters, 3, padding="same", use_bias=False), L.BatchNorm2D()]
        self.relu = L.ReLU()

    def build(self, input_shape):
        for layer in self.body + [self.relu]:
            layer.build(input_shape)

    def call(self, x, training=False):
        saved, h = [], x
        for layer in self.body:
            h, s = layer.call(h, training)
            saved.append(s)
        y, s = self.relu.call(h + x, training)
        return y, (saved, s)

    def backward(self, dy, saved):
        body, s = saved
        skip = g = self.relu.backward(dy, s)
        for layer, s in zip(reversed(self.body), reversed(body)):
            g = layer.backward(g, s)
        return g + skip

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def residual_model(kind, filters, shape, dtype):
    import cconv
    inp = cconv.Input(shape)
    if kind == "block":
        out = ResBlock(filters)(inp)
    else:
        h = L.ReLU()(L.BatchNorm2D()(L.Conv2D(filters, 3, padding="same", use_bias=False)(inp)))
        h = L.BatchNorm2D()(L.Conv2D(filters, 3, padding="same", use_bias=False)(h))
        out = L.ReLU()(L.Add()([inp, h]))
    return cconv.Model(inp, out, seed=0, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["graph", "block"])
def test_residual_block(kind, dtype):
    shape, C = (3, 6, 5, 4), 4
    model = residual_model(kind, C, shape[1:], dtype)
    kernels = [rand((3, 3, C, C), dtype, seed=10 + i) * 0.3 for i in range(2)]
    bn = [(rand((C,), dtype, seed=20 + i) + 1.5, rand((C,), dtype, seed=30 + i)) for i in range(2)]
    model.set_weights([kernels[0], *bn[0], np.zeros(C), np.ones(C), kernels[1], *bn[1], np.zeros(C), np.ones(C)])
    x, dy = rand(shape, dtype, seed=1), rand(shape, dtype, seed=2)
    y = model.forward(x, training=True)
    dx = model.backward(dy, input_grad=True)
    grads = {n: g for n, _, g in model.parameters()}

    xt = nchw(x)
    wt = [torch.tensor(k.transpose(3, 2, 0, 1).copy(), requires_grad=True) for k in kernels]
    gt = [(torch.tensor(g, requires_grad=True), torch.tensor(b, requires_grad=True)) for g, b in bn]
    stats = [(torch.zeros(C, dtype=xt.dtype), torch.ones(C, dtype=xt.dtype)) for _ in range(2)]

    def bnorm(h, i):
        return TF.batch_norm(h, *stats[i], *gt[i], training=True, momentum=0.1, eps=1e-5)

    h = TF.relu(bnorm(TF.conv2d(xt, wt[0], padding=1), 0))
    yt = TF.relu(xt + bnorm(TF.conv2d(h, wt[1], padding=1), 1))
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, to_nhwc(yt), **tol)
    np.testing.assert_allclose(dx, to_nhwc(xt.grad), **tol)
    kernel_grads = [g for n, g in grads.items() if n.endswith("kernel")]
    gamma_grads = [g for n, g in grads.items() if n.endswith("gamma")]
    beta_grads = [g for n, g in grads.items() if n.endswith("beta")]
    assert len(kernel_grads) == len(gamma_grads) == len(beta_grads) == 2
    for i in range(2):
        np.testing.assert_allclose(kernel_grads[i], wt[i].grad.numpy().transpose(2, 3, 1, 0), **tol)
        np.testing.assert_allclose(gamma_grads[i], gt[i][0].grad.numpy(), **tol)
        np.testing.assert_allclose(beta_grads[i], gt[i][1].grad.numpy(), **tol)
    running = [a for role, _, a in (w for l in model.layers for w in l.weights()) if role == "state"]
    np.testing.assert_allclose(running[0], stats[0][0].numpy(), **tol)        # running mean, BN 1


# ---------------------------------------------------------------------------------
# A whole network: the paper's conv + ReLU + max pool stacks, dense layers, the loss
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_relu_pool_network_gradients_match_torch(dtype):
    """Every gradient of a small paper-like network (ReLU fused into the convolutions, max
    pools after them, one padded, one with overlapping windows) and of its input, from a
    training forward and the cross-entropy's gradient, against PyTorch's autograd."""
    import cconv
    model = cconv.Sequential([
        L.Conv2D(6, 3, activation="relu"), L.MaxPool2D(2),
        L.Conv2D(8, 3, activation="relu", padding="same"), L.MaxPool2D(3, stride=2, padding=1),
        L.Flatten(), L.Dense(7, activation="relu"), L.Dense(5),
    ], input_shape=(14, 14, 3), seed=3, dtype=dtype)
    x = rand((4, 14, 14, 3), dtype, seed=4)
    x[0, :4, :4, :] = -2.0                     # pool windows where the ReLU is 0 everywhere
    y = np.array([0, 3, 1, 4])
    logits = model.forward(x, training=True)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1               # d(mean cross-entropy) / d(logits)
    dx = model.backward(p / len(y), input_grad=True)
    grads = {n: g.copy() for n, _, g in model.parameters()}
    k1, b1, k2, b2, w3, b3, w4, b4 = [torch.tensor(w) for w in model.get_weights()]

    xt = nchw(x)
    params = [torch.tensor(k1.numpy().transpose(3, 2, 0, 1).copy(), requires_grad=True),
              b1.requires_grad_(),
              torch.tensor(k2.numpy().transpose(3, 2, 0, 1).copy(), requires_grad=True),
              b2.requires_grad_(), w3.requires_grad_(), b3.requires_grad_(), w4.requires_grad_(),
              b4.requires_grad_()]
    h = TF.max_pool2d(TF.relu(TF.conv2d(xt, params[0], params[1])), 2)
    h = TF.max_pool2d(TF.relu(TF.conv2d(h, params[2], params[3], padding=1)), 3, 2, padding=1)
    h = h.permute(0, 2, 3, 1).reshape(len(x), -1)          # cconv flattens NHWC
    h = TF.relu(h @ params[4] + params[5]) @ params[6] + params[7]
    TF.cross_entropy(h, torch.tensor(y)).backward()
    tol = TOL[dtype]
    np.testing.assert_allclose(dx, to_nhwc(xt.grad), **tol)
    names = ["conv2d/kernel", "conv2d/bias", "conv2d_1/kernel", "conv2d_1/bias", "dense/kernel",
             "dense/bias", "dense_1/kernel", "dense_1/bias"]
    for name, p in zip(names, params):
        g = p.grad.numpy()
        if g.ndim == 4:
            g = g.transpose(2, 3, 1, 0)
        np.testing.assert_allclose(grads[name], g, **tol, err_msg=name)
    assert np.any(grads["conv2d/kernel"] != 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("first", [("same", 16), ("valid", 32)], ids=["same16", "valid32"])
def test_conv_pool_network_predict_matches_torch(dtype, threads, first, monkeypatch):
    """predict of a conv + (ReLU or linear) + 2x2 max pool stack against PyTorch's forward:
    the inference fusion takes the fused kernels (the direct one for the float32 RGB layer:
    with valid padding and 32 outputs, pooled in the registers; the pooled Winograd tiles
    for the 16- and 20-channel ones), on odd sizes (the last row or column dropped by the
    pool), batches of 1 and 5, 1 and 2 threads; and the training forward (the ReLU pairs
    through the same kernels with the pool's argmax) and every gradient against PyTorch's
    autograd."""
    import cconv
    from cconv._testing import forced, kernels_run
    monkeypatch.setattr(cconv.model, "INFERENCE_SERIAL_MAX", 0)     # batch 1 threaded too
    pad1, c1 = first
    model = cconv.Sequential([
        L.Conv2D(c1, 3, activation="relu", padding=pad1), L.MaxPool2D(2),
        L.Conv2D(20, 3), L.MaxPool2D(2),
        L.Conv2D(12, 3, activation="relu", padding="same"), L.MaxPool2D(2),
        L.Flatten(), L.Dense(5),
    ], input_shape=(17, 19, 3), seed=5, dtype=dtype)
    for b in model.layers:
        if "bias" in b.params:
            b.params["bias"][...] = rand(b.params["bias"].shape, dtype, seed=9)
    k1, b1, k2, b2, k3, b3, w4, b4 = [torch.tensor(w) for w in model.get_weights()]
    for n in (1, 5):
        x = rand((n, 17, 19, 3), dtype, seed=n)
        with forced(threads=threads):
            got = model.predict(x, batch_size=n)
            ran = kernels_run()
        assert "winograd_forward_pool" in ran, sorted(ran)
        assert ran["winograd_forward_pool"].team == threads
        if dtype == np.float32 and cconv._testing.simd_max() >= 1:
            assert "direct_forward_pool" in ran, sorted(ran)
            assert ("direct_forward_pool_registers" in ran) == (pad1 == "valid"), sorted(ran)
        # the training forward (Conv2D.training_fusion: the same kernels with the argmax) and
        # every gradient
        with forced(threads=threads):
            train = model.forward(x, training=True)
            ran = kernels_run()
            dy = rand(train.shape, dtype, seed=7)
            dx = model.backward(dy, input_grad=True)
        assert "winograd_forward_pool" in ran, sorted(ran)
        params = [t.clone().requires_grad_() for t in (k1, b1, k2, b2, k3, b3, w4, b4)]
        xt = nchw(x)
        h = TF.max_pool2d(TF.relu(TF.conv2d(xt, params[0].permute(3, 2, 0, 1), params[1],
                                            padding=1 if pad1 == "same" else 0)), 2)
        h = TF.max_pool2d(TF.conv2d(h, params[2].permute(3, 2, 0, 1), params[3]), 2)
        h = TF.max_pool2d(TF.relu(TF.conv2d(h, params[4].permute(3, 2, 0, 1), params[5],
                                            padding=1)), 2)
        want = h.permute(0, 2, 3, 1).reshape(n, -1) @ params[6] + params[7]
        np.testing.assert_allclose(got, want.detach().numpy(), **TOL[dtype])
        np.testing.assert_allclose(train, want.detach().numpy(), **TOL[dtype])
        (want * torch.tensor(dy)).sum().backward()
        np.testing.assert_allclose(dx, to_nhwc(xt.grad), **TOL[dtype])
        for (name, _, g), p in zip(model.parameters(), params):
            np.testing.assert_allclose(g, p.grad.numpy(), **TOL[dtype], err_msg=name)
