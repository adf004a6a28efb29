"""Finite-difference gradient checking for layers and models.

``cconv.gradcheck(layer_or_model, x, y=None)`` compares every analytic gradient (each
parameter and the input) with central differences ``(L(w + eps) - L(w - eps)) / (2 eps)``
computed in float64, and returns a report::

    >>> report = cconv.gradcheck(Conv2D(4, 3, padding="same"), x)
    >>> report.ok
    True
    >>> print(report)          # one line per tensor: checked, max errors, failures

It is meant for people learning backpropagation or writing their own layers: write a
layer's ``call`` and ``backward`` (see :mod:`cconv.layers`), and check it.

The scalar that is differentiated is the loss ``loss(output, y)`` when targets ``y`` are
given (the model's compiled loss by default), otherwise ``sum(output * R)`` with a fixed
random ``R`` (a random projection: every output element contributes with its own weight,
so a wrong gradient cannot hide behind a symmetric sum).

The object you pass is never modified: the check runs on a float64 copy rebuilt from its
config with the same weights (a layer is checked inside a one-layer model), through the
same forward, loss and backward code that training runs. Randomness (dropout masks) is replayed identically for every
evaluation, so training-mode layers can be checked too.
"""
import sys
import types
from dataclasses import dataclass, field

import numpy as np

__all__ = ["gradcheck", "GradcheckReport", "GradcheckResult", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised by ``gradcheck(..., raise_exception=True)`` when a gradient is wrong."""


@dataclass
class GradcheckResult:
    """The check of one tensor (a parameter, or the input ``"x"``).

    Attributes
    ----------
    name : str
        ``"x"`` for the input, ``"kernel"`` / ``"conv2d/kernel"`` for parameters.
    shape : tuple
    checked : int
        Number of elements compared.
    failures : int
        Elements with ``|numeric - analytic| > atol + rtol * max(|numeric|, |analytic|)``.
    max_abs_error, max_rel_error : float
    worst_index : tuple or None
        Index of the element with the largest excess error.
    numeric, analytic : float
        The two values at ``worst_index``.
    """

    name: str
    shape: tuple
    checked: int
    failures: int
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple = None
    numeric: float = float("nan")
    analytic: float = float("nan")

    @property
    def ok(self):
        return self.failures == 0


@dataclass
class GradcheckReport:
    """All results of one :func:`gradcheck` call; truthy when every gradient is right."""

    results: list = field(default_factory=list)
    eps: float = 1e-6
    rtol: float = 1e-4
    atol: float = 1e-6
    objective: str = ""

    @property
    def ok(self):
        return all(r.ok for r in self.results)

    @property
    def failures(self):
        """The results that failed."""
        return [r for r in self.results if not r.ok]

    def __bool__(self):
        return self.ok

    def __getitem__(self, name):
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def as_dict(self):
        """``{name: {"checked", "failures", "max_abs_error", "max_rel_error", ...}}``."""
        return {r.name: {k: getattr(r, k) for k in ("shape", "checked", "failures", "max_abs_error",
                                                     "max_rel_error", "worst_index", "numeric", "analytic")}
                for r in self.results}

    def __str__(self):
        head = (f"gradcheck ({self.objective}; eps={self.eps:g}, rtol={self.rtol:g}, atol={self.atol:g}): "
                + ("OK" if self.ok else f"{len(self.failures)} of {len(self.results)} tensors FAILED"))
        w = max([len(r.name) for r in self.results] + [6])
        lines = [head, f"  {'tensor':<{w}}  {'checked':>8}  {'failed':>7}  {'max abs err':>11}  {'max rel err':>11}"]
        for r in self.results:
            line = (f"  {r.name:<{w}}  {r.checked:>8}  {r.failures:>7}  {r.max_abs_error:>11.3e}  "
                    f"{r.max_rel_error:>11.3e}")
            if not r.ok:
                line += f"  worst at {r.worst_index}: numeric {r.numeric:.6g}, analytic {r.analytic:.6g}"
            lines.append(line)
        return "\n".join(lines)

    def raise_if_failed(self):
        """Raise :class:`GradcheckError` with the report if any gradient is wrong."""
        if not self.ok:
            raise GradcheckError(str(self))


def _classes(layers):
    return {type(sub).__name__: type(sub) for layer in layers for _, sub in layer.named_layers()}


def _float64_copy(obj, x):
    """A float64 model with ``obj``'s weights: ``(model, prefix_names)``."""
    from .layers import Layer
    from .model import Model
    from .symbolic import Input

    if isinstance(obj, Model):
        if not obj.built:
            obj.build(np.shape(x)[1:])
        net = type(obj).from_config(dict(obj.get_config(), dtype="float64"), custom_objects=_classes(obj.layers))
        net.set_weights(obj.get_weights())
        return net, True
    if isinstance(obj, Layer):
        clone = type(obj).from_config(obj.get_config())
        if obj.built:
            shapes = obj.input_shape
        else:
            shapes = [np.shape(a)[1:] for a in x] if obj.multiple_inputs else np.shape(x)[1:]
        inp = [Input(s) for s in shapes] if obj.multiple_inputs else Input(shapes)
        net = Model(inp, clone(inp), name="gradcheck", seed=0, dtype="float64")
        if obj.built:
            net.set_weights([a for _, _, a in obj.weights()])
        return net, False
    raise TypeError(f"gradcheck takes a Layer or a Model (Sequential), got {type(obj).__name__}")


def gradcheck(layer_or_model, x, y=None, eps=1e-6, rtol=1e-4, atol=1e-6, loss=None, training=True,
              max_elements=None, seed=0, raise_exception=False):
    """Check analytic gradients against central finite differences in float64.

    Parameters
    ----------
    layer_or_model : Layer or Model
        Built or not; it is not modified (a float64 copy with the same weights is checked).
    x : ndarray of shape (N, *input_shape) (a list with several inputs)
        Input; converted to float64.
    y : ndarray, optional
        Targets. With ``y`` the checked scalar is the loss training minimises (the model's
        compiled loss, or ``loss``; with a final softmax, fused as in training); without it,
        ``sum(output * R)`` for a fixed random ``R``.
    eps : float, default 1e-6
        Finite-difference step.
    rtol, atol : float, default 1e-4, 1e-6
        An element fails when ``|numeric - analytic| > atol + rtol * max(|numeric|, |analytic|)``.
    loss : str or loss object, optional
        Loss to use with ``y``.
    training : bool, default True
        Check the training-mode function (dropout masks replayed identically, batch
        statistics in BatchNorm) or the inference-mode one.
    max_elements : int, optional
        Check at most this many randomly chosen elements per tensor (all by default).
    seed : int, default 0
        Seed of ``R`` and of the element sampling.
    raise_exception : bool, default False
        Raise :class:`GradcheckError` (with the report) instead of returning a failed report.

    Returns
    -------
    GradcheckReport
        ``report.ok``; ``report["x"]``, ``report["conv2d/kernel"]``, ...; ``print(report)``.

    Raises
    ------
    TypeError
        Not a layer or a model.
    ValueError
        Non-positive ``eps``; targets without a loss.
    """
    from . import training as T

    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    is_layer = not hasattr(layer_or_model, "fit")
    if y is not None and loss is None:
        if is_layer:
            raise ValueError("gradcheck of a layer with y needs loss= (e.g. loss='mse')")
        if not getattr(layer_or_model, "compiled", False):
            raise ValueError("gradcheck with y needs loss= or a compiled model")
    multi = isinstance(x, (list, tuple))
    xs = [np.array(a, dtype=np.float64, copy=True) for a in (x if multi else [x])]
    if any(a.ndim < 2 for a in xs):
        raise ValueError(f"x must have a batch dimension first, got shape {[a.shape for a in xs]}")
    net, prefix = _float64_copy(layer_or_model, xs if multi else xs[0])
    rng = np.random.default_rng(seed)
    xs = [np.ascontiguousarray(a) for a in T.input_arrays(net, xs if multi else xs[0])]

    rng_state = net.get_rng_state()
    saved_state = [(a, a.copy()) for layer in net.layers for role, _, a in layer.weights() if role == "state"]

    def reset():
        net.set_rng_state(rng_state)
        for a, v in saved_state:
            np.copyto(a, v)

    if y is None:
        plan = ys = None
        outs0 = net.run(xs, training, cache=False)
        Rs = [rng.standard_normal(o.shape) for o in outs0]
        objective = "sum(output * R), R ~ N(0, 1)"

        def scalar():
            reset()
            return float(sum(np.sum(o * r) for o, r in zip(net.run(xs, training, cache=False), Rs)))
    else:
        if loss is None:
            plan = T.LossPlan(net, layer_or_model.loss, layer_or_model.loss_weights)
        else:
            plan = T.LossPlan(net, T.make_loss(loss))
        ys = T.target_arrays(net, y, xs[0].shape[0], plan_losses=plan.losses)
        objective = " + ".join(f"{type(lo).__name__}(output, y)" for lo in plan.losses)

        def scalar():
            reset()
            outs = net.run(xs, training, cache=False, pre_activation=plan.pre_activation)
            return plan.values(outs, ys)[0]

    # analytic
    reset()
    if y is None:
        net.run(xs, training, cache=True)
        dxs = net.run_backward([r.copy() for r in Rs], input_grad=True)
    else:
        _, _, dxs = T.loss_and_gradients(net, xs, ys, plan, training=training, input_grad=True)
    names = ["x"] if len(xs) == 1 else [f"x[{i}]" for i in range(len(xs))]
    analytic = {n: np.array(d, dtype=np.float64) for n, d in zip(names, dxs)}
    tensors = list(zip(names, xs))
    params = net.parameters() if prefix else net.layers[0].parameters()
    for name, p, g in params:
        analytic[name] = g.copy()
        tensors.append((name, p))

    report = GradcheckReport(eps=eps, rtol=rtol, atol=atol, objective=objective)
    for name, arr in tensors:
        flat = arr.reshape(-1)
        n = flat.size
        idx = np.arange(n) if max_elements is None or max_elements >= n else np.sort(
            rng.choice(n, size=int(max_elements), replace=False))
        num = np.empty(idx.size)
        for j, i in enumerate(idx):
            orig = flat[i]
            flat[i] = orig + eps
            lp = scalar()
            flat[i] = orig - eps
            lm = scalar()
            flat[i] = orig
            num[j] = (lp - lm) / (2 * eps)
        ana = analytic[name].reshape(-1)[idx]
        err = np.abs(num - ana)
        scale = np.maximum(np.abs(num), np.abs(ana))
        bad = err > atol + rtol * scale
        rel = err / np.maximum(scale, np.finfo(np.float64).tiny)
        excess = err - (atol + rtol * scale)
        w = int(np.argmax(excess)) if idx.size else None
        report.results.append(GradcheckResult(
            name=name, shape=tuple(arr.shape), checked=int(idx.size), failures=int(bad.sum()),
            max_abs_error=float(err.max()) if idx.size else 0.0,
            max_rel_error=float(rel.max()) if idx.size else 0.0,
            worst_index=None if w is None else tuple(int(v) for v in np.unravel_index(idx[w], arr.shape)),
            numeric=float(num[w]) if w is not None else float("nan"),
            analytic=float(ana[w]) if w is not None else float("nan")))
    if raise_exception:
        report.raise_if_failed()
    return report


class _CallableModule(types.ModuleType):
    """Let ``cconv.gradcheck(...)`` work even after ``import cconv.gradcheck``.

    Importing the submodule binds the package attribute ``cconv.gradcheck`` to this module,
    shadowing the function of the same name that ``cconv`` exports; calling the module
    calls the function.
    """

    def __call__(self, *args, **kwargs):
        return gradcheck(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
