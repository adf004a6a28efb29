"""Optimizers and schedules against straightforward reference implementations."""
import json
import tracemalloc

import numpy as np
import pytest

from cconv import optim


# ---------------------------------------------------------------------------------
# Reference implementations written from the formulas (allocating, one param)
# ---------------------------------------------------------------------------------
def ref_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    buf = None
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def ref_adam(p, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        mhat = m / (1 - beta1 ** t)
        vhat = v / (1 - beta2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


def ref_rmsprop(p, grads, lr, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
    v = np.zeros_like(p)
    buf = np.zeros_like(p)
    for g in grads:
        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        step = g / (np.sqrt(v) + eps)
        if momentum:
            buf = momentum * buf + step
            step = buf
        p = p - lr * step
    return p


def run(opt, p0, grads):
    p = p0.copy()
    g = np.zeros_like(p)
    opt.attach([("layer/w", p, g)])
    for gi in grads:
        g[...] = gi
        opt.step()
    return p


RNG = np.random.default_rng(0)
P0 = RNG.standard_normal((4, 5))
GRADS = [RNG.standard_normal((4, 5)) for _ in range(20)]

CASES = [
    ("sgd", optim.SGD(lr=0.1), lambda p, g: ref_sgd(p, g, 0.1)),
    ("sgd momentum", optim.SGD(0.05, momentum=0.9), lambda p, g: ref_sgd(p, g, 0.05, 0.9)),
    ("sgd nesterov", optim.SGD(0.05, momentum=0.8, nesterov=True),
     lambda p, g: ref_sgd(p, g, 0.05, 0.8, True)),
    ("sgd wd", optim.SGD(0.05, weight_decay=0.1), lambda p, g: ref_sgd(p, g, 0.05, 0, False, 0.1)),
    ("sgd nesterov wd", optim.SGD(0.05, momentum=0.7, nesterov=True, weight_decay=0.1),
     lambda p, g: ref_sgd(p, g, 0.05, 0.7, True, 0.1)),
    ("adam", optim.Adam(lr=0.01), lambda p, g: ref_adam(p, g, 0.01)),
    ("adam wd betas", optim.Adam(0.02, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
     lambda p, g: ref_adam(p, g, 0.02, 0.8, 0.99, 1e-6, 0.1)),
    ("adamw", optim.AdamW(lr=0.01), lambda p, g: ref_adam(p, g, 0.01, weight_decay=0.01,
                                                         decoupled=True)),
    ("rmsprop", optim.RMSprop(lr=0.01), lambda p, g: ref_rmsprop(p, g, 0.01)),
    ("rmsprop momentum wd", optim.RMSprop(0.01, alpha=0.9, momentum=0.5, weight_decay=0.1),
     lambda p, g: ref_rmsprop(p, g, 0.01, 0.9, 1e-8, 0.5, 0.1)),
]


@pytest.mark.parametrize("name,opt,ref", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(name, opt, ref):
    p = run(opt, P0, GRADS)
    np.testing.assert_allclose(p, ref(P0, GRADS), rtol=1e-12, atol=1e-14)
    assert opt.iterations == len(GRADS)
    assert not np.allclose(p, P0)


def test_plain_sgd_is_exactly_f_minus_lr_grad():
    p = P0.copy()
    g = GRADS[0].copy()
    opt = optim.SGD(lr=0.1)
    opt.attach([("w", p, g)])
    opt.step()
    np.testing.assert_array_equal(p, P0 - 0.1 * GRADS[0])
    np.testing.assert_array_equal(g, GRADS[0])           # the gradient is not modified


@pytest.mark.parametrize("make", [lambda: optim.SGD(momentum=0.9, nesterov=True, weight_decay=0.1),
                                  lambda: optim.Adam(weight_decay=0.1), lambda: optim.AdamW(),
                                  lambda: optim.RMSprop(momentum=0.9, weight_decay=0.1)])
def test_steps_allocate_nothing_after_the_first(make):
    p = np.random.default_rng(1).standard_normal(100_000)
    g = np.random.default_rng(2).standard_normal(100_000)
    opt = make()
    opt.attach([("w", p, g)])
    opt.step()                            # creates the state and the scratch buffers
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(5):
            opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 20_000, f"a step allocated {peak - base} bytes (param: {p.nbytes})"


def test_float32_parameters_keep_float32_state():
    p = P0.astype(np.float32)
    g = GRADS[0].astype(np.float32)
    opt = optim.Adam(lr=0.01)
    opt.attach([("w", p, g)])
    opt.step()
    assert p.dtype == np.float32
    sd = opt.state_dict()
    assert sd["m/w"].dtype == np.float32 and sd["v/w"].dtype == np.float32
    np.testing.assert_allclose(p, ref_adam(P0, GRADS[:1], 0.01), rtol=1e-5)


def test_several_parameters_and_zero_grad():
    a, ga = P0.copy(), GRADS[0].copy()
    b, gb = P0[0].copy(), GRADS[1][0].copy()
    opt = optim.SGD(lr=0.5, momentum=0.5)
    opt.attach([("a", a, ga), ("b", b, gb)])
    opt.step()
    np.testing.assert_allclose(a, P0 - 0.5 * GRADS[0])
    np.testing.assert_allclose(b, P0[0] - 0.5 * GRADS[1][0])
    opt.zero_grad()
    assert not ga.any() and not gb.any()
    assert [n for n, _, _ in opt.parameters()] == ["a", "b"]


# ---------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: optim.SGD(0.05, momentum=0.9), lambda: optim.Adam(0.01),
                                  lambda: optim.AdamW(0.01), lambda: optim.RMSprop(momentum=0.5)])
@pytest.mark.parametrize("load_before_attach", [False, True])
def test_state_dict_round_trip_continues_identically(make, load_before_attach):
    opt = make()
    p = P0.copy()
    g = np.zeros_like(p)
    opt.attach([("w", p, g)])
    for gi in GRADS[:5]:
        g[...] = gi
        opt.step()
    opt.lr = opt.lr / 2
    sd = opt.state_dict()
    assert sd["iterations"] == 5
    assert all(isinstance(sd[k], (int, float)) for k in ("iterations", "lr"))
    assert all(isinstance(v, np.ndarray) for k, v in sd.items() if "/" in k)

    clone = optim.deserialize(json.loads(json.dumps(optim.serialize(opt))))
    q = p.copy()
    h = np.zeros_like(q)
    if load_before_attach:
        clone.load_state_dict(sd)
        clone.attach([("w", q, h)])
    else:
        clone.attach([("w", q, h)])
        clone.load_state_dict(sd)
    assert clone.lr == opt.lr and clone.iterations == 5
    for gi in GRADS[5:10]:
        g[...] = gi
        h[...] = gi
        opt.step()
        clone.step()
    np.testing.assert_array_equal(q, p)


def test_state_dict_is_a_copy():
    opt = optim.Adam()
    p, g = P0.copy(), GRADS[0].copy()
    opt.attach([("w", p, g)])
    opt.step()
    sd = opt.state_dict()
    sd["m/w"][...] = 123.0
    assert not np.any(opt.state_dict()["m/w"] == 123.0)


def test_load_state_dict_errors():
    opt = optim.Adam()
    p, g = P0.copy(), GRADS[0].copy()
    opt.attach([("conv/kernel", p, g)])
    good = {"iterations": 3, "lr": 0.001, "m/conv/kernel": np.zeros((4, 5)),
            "v/conv/kernel": np.zeros((4, 5))}
    opt.load_state_dict(good)
    with pytest.raises(ValueError, match=r"m/conv/kernel.*\(4, 4\).*\(4, 5\)"):
        opt.load_state_dict({**good, "m/conv/kernel": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="dense/kernel"):
        opt.load_state_dict({**good, "m/dense/kernel": np.zeros(3), "v/dense/kernel": np.zeros(3)})
    with pytest.raises(ValueError, match="momentum/conv/kernel"):
        opt.load_state_dict({**good, "momentum/conv/kernel": np.zeros((4, 5))})
    with pytest.raises(ValueError, match=r"lacks \['v'\]"):
        opt.load_state_dict({"m/conv/kernel": np.zeros((4, 5))})
    # a mismatch found at attach time (state loaded first)
    other = optim.Adam()
    other.load_state_dict({"m/w": np.zeros(3), "v/w": np.zeros(3)})
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 5\)"):
        other.attach([("w", p, g)])


# ---------------------------------------------------------------------------------
# Clipping, learning rate, attach
# ---------------------------------------------------------------------------------
def test_clipnorm_clips_the_global_norm():
    a, ga = np.zeros(3), np.array([3.0, 0.0, 0.0])
    b, gb = np.zeros(2), np.array([0.0, 4.0])         # global norm 5
    opt = optim.SGD(lr=1.0, clipnorm=1.0)
    opt.attach([("a", a, ga), ("b", b, gb)])
    opt.step()
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(a, [-3 * scale, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(b, [0, -4 * scale], rtol=1e-12)
    # below the threshold nothing changes
    a2, g2 = np.zeros(2), np.array([0.3, 0.4])
    opt2 = optim.SGD(lr=1.0, clipnorm=1.0)
    opt2.attach([("a", a2, g2)])
    opt2.step()
    np.testing.assert_array_equal(a2, [-0.3, -0.4])


def test_lr_property_changes_the_next_step():
    p, g = np.zeros(2), np.ones(2)
    opt = optim.SGD(lr=0.1)
    opt.attach([("w", p, g)])
    opt.lr = 0.5
    opt.step()
    np.testing.assert_allclose(p, [-0.5, -0.5])
    assert opt.initial_lr == 0.1 and opt.get_config()["lr"] == 0.1
    opt.lr = 0.0                           # a schedule may reach 0
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0


def test_step_needs_attach_and_attach_validates():
    with pytest.raises(RuntimeError, match="attach"):
        optim.Adam().step()
    opt = optim.SGD()
    p = np.zeros((4, 4))
    with pytest.raises(ValueError, match="contiguous"):
        opt.attach([("w", p[:, ::2], np.zeros((4, 2)))])
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 3\)"):
        opt.attach([("w", p, np.zeros((4, 3)))])
    with pytest.raises(ValueError, match="duplicate"):
        opt.attach([("w", p, np.zeros((4, 4))), ("w", p.copy(), np.zeros((4, 4)))])
    with pytest.raises(TypeError, match="float"):
        opt.attach([("w", np.zeros(3, int), np.zeros(3, int))])


# ---------------------------------------------------------------------------------
# Construction, names, configs
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cls", [("sgd", optim.SGD), ("adam", optim.Adam),
                                      ("AdamW", optim.AdamW), ("rmsprop", optim.RMSprop)])
def test_get_by_name(name, cls):
    assert type(optim.get(name)) is cls


def test_get_instances_classes_dicts_and_unknown():
    o = optim.Adam(lr=0.1)
    assert optim.get(o) is o
    assert isinstance(optim.get(optim.SGD), optim.SGD)
    clone = optim.get(optim.serialize(o))
    assert clone.get_config() == o.get_config()
    assert repr(clone) == "Adam(lr=0.1)"
    assert optim.AdamW().weight_decay == 0.01
    assert optim.SGD().lr == 0.01 and optim.Adam().lr == 1e-3 and optim.RMSprop().lr == 0.01
    with pytest.raises(ValueError, match="adagrad"):
        optim.get("adagrad")


@pytest.mark.parametrize("make,match", [
    (lambda: optim.SGD(lr=0), r"lr.*0"), (lambda: optim.Adam(lr=-1e-3), "lr"),
    (lambda: optim.SGD(momentum=-0.1), "momentum"),
    (lambda: optim.SGD(nesterov=True), "nesterov"),
    (lambda: optim.Adam(beta1=1.0), r"beta1.*1\.0"), (lambda: optim.Adam(beta2=-0.5), "beta2"),
    (lambda: optim.AdamW(weight_decay=-1), "weight_decay"),
    (lambda: optim.RMSprop(alpha=1.5), "alpha"), (lambda: optim.Adam(clipnorm=0), "clipnorm"),
    (lambda: optim.SGD(lr=float("nan")), "lr"),
    (lambda: optim.StepLR(0), "step_size"), (lambda: optim.ExponentialLR(0), "gamma"),
    (lambda: optim.CosineAnnealingLR(0), "T_max"),
    (lambda: optim.CosineAnnealingLR(5, eta_min=-1), "eta_min"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------
def test_schedules():
    s = optim.StepLR(step_size=3, gamma=0.5)
    assert [s(e, 1.0) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    e = optim.ExponentialLR(0.9)
    assert e(3, 2.0) == pytest.approx(2.0 * 0.9 ** 3)
    c = optim.CosineAnnealingLR(T_max=4, eta_min=0.1)
    vals = [c(k, 1.1) for k in range(5)]
    assert vals[0] == pytest.approx(1.1) and vals[4] == pytest.approx(0.1)
    assert vals[2] == pytest.approx(0.6)
    assert all(a > b for a, b in zip(vals, vals[1:]))
    assert c.get_lr(2, 1.1) == vals[2]
    assert isinstance(c, optim.LRSchedule)
    assert optim.StepLR.from_config(s.get_config())(5, 1.0) == 0.5
    with pytest.raises(ValueError, match="epoch"):
        s(-1, 1.0)
