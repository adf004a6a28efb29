"""Finite-difference gradient checking for layers and models.

``cconv.gradcheck(layer_or_model, x, y=None)`` compares every analytic gradient (each
parameter and the input) with central differences ``(L(w + eps) - L(w - eps)) / (2 eps)``
computed in float64, and returns a report::

    >>> report = cconv.gradcheck(Conv2D(4, 3, padding="same"), x)
    >>> report.ok
    True
    >>> print(report)          # one line per tensor: checked, max errors, failures

It is meant for people learning backpropagation or writing their own layers: subclass a
layer, implement ``_forward`` / ``_backward``, and check it.

The scalar that is differentiated is the loss ``loss(output, y)`` when targets ``y`` are
given (the model's compiled loss by default), otherwise ``sum(output * R)`` with a fixed
random ``R`` (a random projection: every output element contributes with its own weight,
so a wrong gradient cannot hide behind a symmetric sum).

The object you pass is never modified: the check runs on a float64 copy rebuilt from its
config with the same weights. Randomness (dropout masks) is replayed identically for every
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


def _clone_layer(layer, input_shape):
    clone = type(layer).from_config(layer.get_config())
    clone.build(input_shape, np.random.default_rng(0), np.float64)
    if getattr(layer, "built", False):
        for src, dst in ((layer.params, clone.params), (getattr(layer, "state", {}), clone.state)):
            for k, v in src.items():
                if dst[k].shape != v.shape:
                    raise ValueError(f"cannot copy {layer.name or type(layer).__name__}.{k}: shape {v.shape} "
                                     f"vs rebuilt {dst[k].shape}")
                np.copyto(dst[k], v, casting="unsafe")
    clone.name = layer.name
    return clone


def _generators(layers):
    out = []
    for layer in layers:
        out += [v for v in vars(layer).values() if isinstance(v, np.random.Generator)]
    return out


def gradcheck(layer_or_model, x, y=None, eps=1e-6, rtol=1e-4, atol=1e-6, loss=None, training=True,
              max_elements=None, seed=0, raise_exception=False):
    """Check analytic gradients against central finite differences in float64.

    Parameters
    ----------
    layer_or_model : Layer or Sequential
        Built or not; it is not modified (a float64 copy with the same weights is checked).
    x : ndarray of shape (N, *input_shape)
        Input; converted to float64.
    y : ndarray, optional
        Targets. With ``y`` the checked scalar is ``loss(output, y)`` (the model's compiled
        loss, or ``loss``); without it, ``sum(output * R)`` for a fixed random ``R``.
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
        Not a layer or a Sequential.
    ValueError
        Non-positive ``eps``; targets without a loss.
    """
    from . import losses
    from .model import Sequential

    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    x = np.array(x, dtype=np.float64, copy=True)
    if x.ndim < 2:
        raise ValueError(f"x must have a batch dimension first, got shape {x.shape}")
    rng = np.random.default_rng(seed)

    if isinstance(layer_or_model, Sequential):
        model = layer_or_model
        shape = model.input_shape if model.built else x.shape[1:]
        clones = []
        cur = tuple(shape)
        for l in model.layers:
            c = _clone_layer(l, cur)
            cur = c.output_shape(cur)
            clones.append(c)
        net = Sequential(clones, input_shape=tuple(shape), seed=model.seed, dtype="float64", name=model.name)
        layers = net.layers
        loss_obj = loss
        if y is not None and loss is None:
            if model.loss is None:
                raise ValueError("gradcheck with y needs loss= or a compiled model")
            loss_obj = model.loss
        prefix = True
    elif hasattr(layer_or_model, "forward") and hasattr(layer_or_model, "backward") and hasattr(layer_or_model, "params"):
        layer = layer_or_model
        shape = layer.input_shape if getattr(layer, "built", False) else x.shape[1:]
        net = None
        layers = [_clone_layer(layer, tuple(shape))]
        loss_obj = loss
        if y is not None and loss is None:
            raise ValueError("gradcheck of a layer with y needs loss= (e.g. loss='mse')")
        prefix = False
    else:
        raise TypeError(f"gradcheck takes a Layer or a Sequential, got {type(layer_or_model).__name__}")
    if isinstance(loss_obj, str):
        loss_obj = losses.get(loss_obj)
    for l in layers:
        l.need_input_grad = True

    gens = _generators(layers)
    gen_states = [g.bit_generator.state for g in gens]
    saved_state = [(a, a.copy()) for l in layers for a in l.state.values()]

    def reset():
        for g, st in zip(gens, gen_states):
            g.bit_generator.state = st
        for a, v in saved_state:
            np.copyto(a, v)

    fused = net is not None and y is not None
    if fused:
        net.loss = loss_obj

    def run(inp, cache):
        reset()
        if fused:
            return net._forward_loss_input(inp, training=training, cache=cache)
        out = inp
        for l in layers:
            out = l.forward(out, training=training, cache=cache)
        return out

    out0 = run(x, cache=False)
    if y is None:
        R = rng.standard_normal(out0.shape)
        objective = "sum(output * R), R ~ N(0, 1)"

        def scalar(out):
            return float(np.sum(out * R))
    else:
        objective = f"{type(loss_obj).__name__}(output, y)"

        def scalar(out):
            return float(loss_obj(out, y))

    # analytic
    out = run(x, cache=True)
    if y is None:
        dout = R.copy()
    else:
        loss_obj(out, y)
        dout = loss_obj.backward()
    if fused:
        dx = net._backward_from_loss(dout)
    else:
        dx = dout
        for l in reversed(layers):
            dx = l.backward(dx)
    analytic = {"x": np.array(dx, dtype=np.float64)}
    tensors = [("x", x)]
    for l in layers:
        for k, p in l.params.items():
            name = f"{l.name}/{k}" if prefix else k
            analytic[name] = l.grads[k].copy()
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
            lp = scalar(run(x, cache=False))
            flat[i] = orig - eps
            lm = scalar(run(x, cache=False))
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
