"""Optimizers (SGD, Adam, AdamW, RMSprop) and learning-rate schedules.

An optimizer is attached to ``(name, param, grad)`` triples (what
:meth:`cconv.Model.parameters` returns) and updates every parameter **in place** from
its gradient on each :meth:`Optimizer.step`::

    opt = Adam(lr=1e-3)
    opt.attach(model.parameters())
    ...                      # forward, loss, backward: fills the grads
    opt.step()

The update rules follow PyTorch's ``torch.optim`` exactly (so results can be compared);
each is a plain function (:func:`sgd_update`, :func:`adam_update`, :func:`rmsprop_update`)
whose docstring states the algorithm, and the classes only keep the state. Per-parameter
state (momentum buffers, moment estimates) and one scratch buffer per parameter are
created on the first step; after that a step allocates no array.

Arguments use PyTorch's names (``lr``, ``weight_decay``); Keras's ``learning_rate``,
``beta_1``, ``beta_2`` and ``epsilon`` are accepted as aliases, and PyTorch's ``betas=`` and
``Adam(model.parameters(), lr=...)`` raise a TypeError that says what to write.

``clipnorm`` clips by the global norm over all gradients before the update (as
``torch.nn.utils.clip_grad_norm_``): when ``||g|| > clipnorm`` every gradient is scaled by
``clipnorm / (||g|| + 1e-6)``, in place.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _keywords
from . import _registry
from . import functional as F
from . import _validate as V
from ._interrupts import deferred_signals

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "sgd_update", "adam_update",
           "rmsprop_update", "clip_grad_norm", "LRSchedule", "StepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "OneCycleLR", "WarmupCosineLR",
           "get", "serialize", "deserialize"]


# ---------------------------------------------------------------------------------
# The update rules (in place; scratch arrays are provided by the caller)
# ---------------------------------------------------------------------------------
def sgd_update(param, grad, lr, momentum=0.0, nesterov=False, weight_decay=0.0, *,
               buf=None, first=False, scratch):
    """One SGD step, in place (PyTorch's ``torch.optim.SGD``, dampening 0)::

        d = grad + weight_decay * param
        if momentum:
            buf = d                       (first step)
            buf = momentum * buf + d      (later steps)
            d = d + momentum * buf        (nesterov)  |  d = buf
        param = param - lr * d

    With ``momentum = weight_decay = 0`` this is the plain rule ``F <- F - lr * dL/dF``.

    Parameters
    ----------
    param : ndarray  # IN/OUT
    grad : ndarray   # IN (not modified)
    buf : ndarray or None  # IN/OUT, the momentum buffer (needed when momentum > 0)
    first : bool
        Whether this is the buffer's first step (it is then set to ``d``).
    scratch : ndarray of param's shape and dtype  # OUT, work space
    """
    dt = param.dtype.type
    d = grad
    if weight_decay:
        np.multiply(param, dt(weight_decay), out=scratch)
        scratch += grad
        d = scratch
    if momentum:
        if first:
            np.copyto(buf, d)
        else:
            buf *= dt(momentum)
            buf += d
        if nesterov:
            if d is grad:
                np.multiply(buf, dt(momentum), out=scratch)
                scratch += grad
                d = scratch
            else:                                     # param -= lr * d + lr * momentum * buf
                scratch *= dt(lr)
                param -= scratch
                np.multiply(buf, dt(lr * momentum), out=scratch)
                param -= scratch
                return
        else:
            d = buf
    np.multiply(d, dt(lr), out=scratch)
    param -= scratch


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, decoupled=False, *, scratch, grad_scratch=None):
    """One Adam / AdamW step, in place (PyTorch's ``torch.optim.Adam`` / ``AdamW``)::

        param = param * (1 - lr * weight_decay)          (AdamW: decoupled decay)
        g = grad + weight_decay * param                  (Adam: L2 added to the gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        param = param - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    param : ndarray  # IN/OUT
    grad : ndarray   # IN (not modified)
    m, v : ndarray   # IN/OUT, first and second moment estimates
    step : int
        ``t``, counted from 1.
    decoupled : bool
        AdamW's decoupled weight decay instead of Adam's L2 term.
    scratch : ndarray  # OUT, work space of param's shape
    grad_scratch : ndarray  # OUT, work space for ``g`` (needed for Adam with weight decay)
    """
    dt = param.dtype.type
    g = grad
    if weight_decay:
        if decoupled:
            param *= dt(1.0 - lr * weight_decay)
        else:
            np.multiply(param, dt(weight_decay), out=grad_scratch)
            grad_scratch += grad
            g = grad_scratch
    m *= dt(beta1)
    np.multiply(g, dt(1.0 - beta1), out=scratch)
    m += scratch
    v *= dt(beta2)
    np.multiply(g, g, out=scratch)
    scratch *= dt(1.0 - beta2)
    v += scratch
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    np.sqrt(v, out=scratch)
    scratch /= dt(math.sqrt(bc2))
    scratch += dt(eps)
    np.divide(m, scratch, out=scratch)
    scratch *= dt(lr / bc1)
    param -= scratch


def rmsprop_update(param, grad, v, lr, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0, *,
                   buf=None, scratch, grad_scratch=None):
    """One RMSprop step, in place (PyTorch's ``torch.optim.RMSprop``, not centered)::

        g = grad + weight_decay * param
        v = alpha * v + (1 - alpha) * g**2
        if momentum:
            buf = momentum * buf + g / (sqrt(v) + eps)      (buf starts at 0)
            param = param - lr * buf
        else:
            param = param - lr * g / (sqrt(v) + eps)

    Parameters
    ----------
    param : ndarray  # IN/OUT
    grad : ndarray   # IN (not modified)
    v : ndarray      # IN/OUT, running average of the squared gradient
    buf : ndarray or None  # IN/OUT, momentum buffer (momentum > 0)
    scratch, grad_scratch : ndarray  # OUT, work space (grad_scratch when weight_decay > 0)
    """
    dt = param.dtype.type
    g = grad
    if weight_decay:
        np.multiply(param, dt(weight_decay), out=grad_scratch)
        grad_scratch += grad
        g = grad_scratch
    v *= dt(alpha)
    np.multiply(g, g, out=scratch)
    scratch *= dt(1.0 - alpha)
    v += scratch
    np.sqrt(v, out=scratch)
    scratch += dt(eps)
    np.divide(g, scratch, out=scratch)
    if momentum:
        buf *= dt(momentum)
        buf += scratch
        np.multiply(buf, dt(lr), out=scratch)
    else:
        scratch *= dt(lr)
    param -= scratch


def clip_grad_norm(grads, max_norm) -> float:
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the scale is ``max_norm / (norm + 1e-6)`` when
    that is below 1. Returns the norm before clipping.
    """
    total = 0.0
    for g in grads:
        flat = g.reshape(-1)
        total += float(np.dot(flat, flat))
    norm = math.sqrt(total)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return norm


# ---------------------------------------------------------------------------------
# Optimizer classes
# ---------------------------------------------------------------------------------
def _check_not_params(name, args, kwargs):
    """``Adam(model.parameters(), lr=...)`` (PyTorch's form) gets an error that says how."""
    if args and not isinstance(args[0], numbers.Real) and hasattr(args[0], "__iter__"):
        raise TypeError(f"{name}() takes the learning rate first, got {type(args[0]).__name__}: "
                        f"cconv's optimizers are not given the parameters (model.compile(optimizer) "
                        f"attaches them; in your own loop, optimizer.attach(model.parameters())). "
                        f"Write {name}(lr=...)")


class Optimizer:
    """Base class: parameter bookkeeping, lazily created state, clipping, (de)serialisation.

    Attributes
    ----------
    lr : float
        The current learning rate (settable; schedules change it).
    initial_lr : float
        The learning rate given to the constructor (what ``get_config`` stores and what
        schedules start from).
    iterations : int
        Number of steps taken.
    clipnorm : float or None
    """

    #: The name accepted by :func:`get`.
    name = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            _keywords.wrap_init(cls, _check_not_params)

    def __init__(self, lr, clipnorm=None):
        self._lr = V.number(lr, "lr", low=0.0, low_open=True)
        self.initial_lr = self._lr
        self.clipnorm = None if clipnorm is None else V.number(clipnorm, "clipnorm", low=0.0,
                                                              low_open=True)
        self.iterations = 0
        self._params: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._state: dict[str, dict[str, np.ndarray]] = {}
        self._scratch: dict[str, dict[str, np.ndarray]] = {}

    # -- learning rate --------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = V.number(value, "lr", low=0.0)

    # -- parameters -------------------------------------------------------------------
    def _slots(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays."""
        return ()

    def attach(self, params) -> None:
        """Take the ``(name, param, grad)`` triples this optimizer updates.

        Parameters must be writeable, C-contiguous float arrays with gradients of the same
        shape and dtype. State already held (e.g. from :meth:`load_state_dict`) is kept for
        names that are still present and checked against their shapes.
        """
        triples = []
        seen = set()
        for item in params:
            try:
                name, p, g = item
            except (TypeError, ValueError):
                raise TypeError(f"attach expects (name, param, grad) triples, "
                                f"got {item!r:.80}") from None
            if not isinstance(name, str):
                raise TypeError(f"parameter names must be str, got {name!r}")
            if name in seen:
                raise ValueError(f"duplicate parameter name {name!r}")
            seen.add(name)
            for what, a in (("param", p), ("grad", g)):
                if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
                    raise TypeError(f"{what} {name!r} must be a float32/float64 ndarray, got "
                                    f"{getattr(a, 'dtype', type(a).__name__)}")
                if not a.flags.c_contiguous or not a.flags.writeable:
                    raise ValueError(f"{what} {name!r} must be a writeable C-contiguous array "
                                     f"(updates happen in place)")
            if p.shape != g.shape or p.dtype != g.dtype:
                raise ValueError(f"param {name!r} {p.shape} {p.dtype} and its grad "
                                 f"{g.shape} {g.dtype} must have the same shape and dtype")
            triples.append((name, p, g))
        by_name = {n: p for n, p, _ in triples}
        for name in list(self._state):
            if name not in by_name:
                del self._state[name]
                continue
            self._state[name] = self._checked_state(name, self._state[name], by_name[name])
        self._params = triples
        self._scratch = {}

    def _checked_state(self, name, st, p):
        out = {}
        for slot, a in st.items():
            if a.shape != p.shape:
                raise ValueError(f"optimizer state '{slot}/{name}' has shape {a.shape} but the "
                                 f"parameter has shape {p.shape}")
            out[slot] = np.array(a, dtype=p.dtype, order="C")
        return out

    def parameters(self):
        """The attached ``(name, param, grad)`` triples."""
        return list(self._params)

    def zero_grad(self) -> None:
        """Set every attached gradient to zero (layers overwrite them anyway)."""
        for _, _, g in self._params:
            g.fill(0)

    # -- stepping ------------------------------------------------------------------------
    def step(self) -> None:
        """Update every attached parameter in place from its gradient.

        All or nothing: the state and scratch arrays are allocated before any parameter
        changes, and SIGINT/SIGTERM (Ctrl-C) are held back until the update is complete,
        so an interrupted training loop stops at a step boundary: the step counter and
        every parameter and state array are either all advanced or none is.
        """
        if not self._params:
            raise RuntimeError(f"{type(self).__name__}.step(): no parameters; call "
                               f"attach(params) (Model.compile does) first")
        with deferred_signals():
            fresh = set()
            for name, p, _ in self._params:
                if name not in self._state:
                    self._state[name] = {s: np.zeros_like(p) for s in self._slots()}
                    fresh.add(name)
            fused = self._fused()
            if not fused:
                for name, p, _ in self._params:
                    if name not in self._scratch:
                        sc = self._scratch[name] = {"s": np.empty_like(p)}
                        if self._needs_grad_scratch():
                            sc["g"] = np.empty_like(p)
            if self.clipnorm is not None:
                clip_grad_norm([g for _, _, g in self._params], self.clipnorm)
            self.iterations += 1
            if fused:
                self._update_fused()
                return
            for name, p, g in self._params:
                self._update(p, g, self._state[name], self._scratch[name], name in fresh)

    def _fused(self) -> bool:
        """Whether this step takes :meth:`_update_fused` (one compiled pass over every
        parameter, no scratch) rather than :meth:`_update` parameter by parameter."""
        return False

    def _update_fused(self) -> None:
        raise NotImplementedError

    def _needs_grad_scratch(self) -> bool:
        return False

    def _update(self, p, g, st, sc, first):
        raise NotImplementedError

    # -- (de)serialisation -------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"iterations": int, "lr": float, "<slot>/<param name>": ndarray, ...}`` (copies)."""
        d = {"iterations": int(self.iterations), "lr": float(self._lr)}
        for name, st in self._state.items():
            for slot, a in st.items():
                d[f"{slot}/{name}"] = a.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict`'s output (before or after :meth:`attach`).

        Raises
        ------
        ValueError
            For unknown keys, state for a parameter that is not attached, a missing slot or a
            shape mismatch.
        """
        if not isinstance(d, dict):
            raise TypeError(f"load_state_dict expects a dict, got {type(d).__name__}")
        slots = self._slots()
        new: dict[str, dict[str, np.ndarray]] = {}
        iterations, lr = self.iterations, self._lr
        for key, value in d.items():
            if key == "iterations":
                it = int(np.asarray(value))
                if it < 0:
                    raise ValueError(f"iterations must be >= 0, got {it}")
                iterations = it
            elif key == "lr":
                lr = V.number(float(np.asarray(value)), "lr", low=0.0)
            elif "/" in key and key.split("/", 1)[0] in slots:
                slot, name = key.split("/", 1)
                new.setdefault(name, {})[slot] = np.asarray(value)
            else:
                raise ValueError(f"unknown key {key!r} in the state of {type(self).__name__} "
                                 f"(per-parameter keys are {[s + '/<name>' for s in slots]})")
        params = {n: p for n, p, _ in self._params}
        for name, st in new.items():
            missing = [s for s in slots if s not in st]
            if missing:
                raise ValueError(f"optimizer state for {name!r} lacks {missing}")
            if params:
                if name not in params:
                    raise ValueError(f"optimizer state for {name!r}, which is not an attached "
                                     f"parameter (attached: {sorted(params)[:8]}...)")
                new[name] = self._checked_state(name, st, params[name])
            else:
                new[name] = {s: np.array(a, order="C") for s, a in st.items()}
        self.iterations, self._lr = iterations, lr
        self._state = new

    def get_config(self) -> dict:
        """Constructor arguments (``lr`` is :attr:`initial_lr`; the current lr is in the state)."""
        return {"lr": self.initial_lr, "clipnorm": self.clipnorm}

    @classmethod
    def from_config(cls, config: dict) -> "Optimizer":
        return cls(**config)

    def __repr__(self):
        cfg = self.get_config()
        default = type(self)().get_config()
        parts = [f"{k}={v!r}" for k, v in cfg.items() if default.get(k) != v]
        return f"{type(self).__name__}({', '.join(parts)})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    The update is :func:`sgd_update` (PyTorch's semantics): with the defaults it is the plain
    rule ``F <- F - lr * dL/dF``.

    Parameters
    ----------
    lr : float > 0
    momentum : float >= 0
    nesterov : bool
        Needs ``momentum > 0``.
    weight_decay : float >= 0
        L2 penalty added to the gradient.
    clipnorm : float or None
        Global gradient-norm clipping.
    """

    name = "sgd"

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clipnorm=None):
        super().__init__(lr, clipnorm)
        self.momentum = V.number(momentum, "momentum", low=0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
        self.weight_decay = V.number(weight_decay, "weight_decay", low=0.0)

    def _slots(self):
        return ("momentum",) if self.momentum else ()

    def _update(self, p, g, st, sc, first):
        sgd_update(p, g, self._lr, self.momentum, self.nesterov, self.weight_decay,
                   buf=st.get("momentum"), first=first, scratch=sc["s"])

    def get_config(self):
        return {"lr": self.initial_lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's semantics: see :func:`adam_update`.

    Parameters
    ----------
    lr : float > 0
    beta1, beta2 : float in [0, 1)
    eps : float >= 0
    weight_decay : float >= 0
        L2 penalty added to the gradient (use :class:`AdamW` for decoupled decay).
    clipnorm : float or None
    """

    name = "adam"
    _decoupled = False

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 clipnorm=None):
        super().__init__(lr, clipnorm)
        self.beta1 = V.number(beta1, "beta1", 0.0, 1.0, high_open=True)
        self.beta2 = V.number(beta2, "beta2", 0.0, 1.0, high_open=True)
        self.eps = V.number(eps, "eps", low=0.0)
        self.weight_decay = V.number(weight_decay, "weight_decay", low=0.0)

    def _slots(self):
        return ("m", "v")

    def _needs_grad_scratch(self):
        return bool(self.weight_decay) and not self._decoupled

    def _update(self, p, g, st, sc, first):
        adam_update(p, g, st["m"], st["v"], self.iterations, self._lr, self.beta1, self.beta2,
                    self.eps, self.weight_decay, self._decoupled, scratch=sc["s"],
                    grad_scratch=sc.get("g"))

    def _fused(self):
        # functional.adam_update: the same arithmetic in one pass on cconv's threads, for
        # parameters of one float dtype whose arrays are all C-contiguous (layers' are)
        dt = self._params[0][1].dtype
        return dt in (np.float32, np.float64) and all(
            a.dtype == dt and a.flags.c_contiguous and a.size == p.size
            for _, p, g in self._params for a in (p, g))

    def _update_fused(self):
        st = [self._state[name] for name, _, _ in self._params]
        F.adam_update([p for _, p, _ in self._params], [g for _, _, g in self._params],
                      [s["m"] for s in st], [s["v"] for s in st], self.iterations, self._lr,
                      self.beta1, self.beta2, self.eps, self.weight_decay, self._decoupled)

    def get_config(self):
        return {"lr": self.initial_lr, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps, "weight_decay": self.weight_decay, "clipnorm": self.clipnorm}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's ``AdamW``.

    Each step first shrinks the parameters by ``(1 - lr * weight_decay)``, then applies the
    Adam update without an L2 term (see :func:`adam_update`). Parameters as :class:`Adam`;
    ``weight_decay`` defaults to 0.01 (PyTorch's default).
    """

    name = "adamw"
    _decoupled = True

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                 clipnorm=None):
        super().__init__(lr, beta1, beta2, eps, weight_decay, clipnorm)


class RMSprop(Optimizer):
    """RMSprop (Hinton) with PyTorch's semantics: see :func:`rmsprop_update`.

    Parameters
    ----------
    lr : float > 0
    alpha : float in [0, 1)
        Smoothing constant of the squared-gradient average.
    eps : float >= 0
    momentum : float >= 0
    weight_decay : float >= 0
    clipnorm : float or None
    """

    name = "rmsprop"

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0,
                 clipnorm=None):
        super().__init__(lr, clipnorm)
        self.alpha = V.number(alpha, "alpha", 0.0, 1.0, high_open=True)
        self.eps = V.number(eps, "eps", low=0.0)
        self.momentum = V.number(momentum, "momentum", low=0.0)
        self.weight_decay = V.number(weight_decay, "weight_decay", low=0.0)

    def _slots(self):
        return ("v", "momentum") if self.momentum else ("v",)

    def _needs_grad_scratch(self):
        return bool(self.weight_decay)

    def _update(self, p, g, st, sc, first):
        rmsprop_update(p, g, st["v"], self._lr, self.alpha, self.eps, self.momentum,
                       self.weight_decay, buf=st.get("momentum"), scratch=sc["s"],
                       grad_scratch=sc.get("g"))

    def get_config(self):
        return {"lr": self.initial_lr, "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm}


_OPTIMIZERS = {c.name: c for c in (SGD, Adam, AdamW, RMSprop)}
_CLASSES = {c.__name__: c for c in (SGD, Adam, AdamW, RMSprop)}


def serialize(opt) -> dict:
    """``{"class_name": "Adam", "config": opt.get_config()}``."""
    return _registry.serialize(opt, Optimizer, "an Optimizer")


def deserialize(d: dict) -> Optimizer:
    """Inverse of :func:`serialize` (without the state); unknown class -> ValueError."""
    return _registry.deserialize(d, _CLASSES, "optimizer")


def get(name_or_obj) -> Optimizer:
    """Resolve an ``optimizer=`` argument.

    Parameters
    ----------
    name_or_obj : str, Optimizer, Optimizer subclass or dict
        ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"`` (with default settings), an
        instance (returned as is), a class, or a :func:`serialize` dict.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if isinstance(name_or_obj, Optimizer):
        return name_or_obj
    if isinstance(name_or_obj, type) and issubclass(name_or_obj, Optimizer):
        return name_or_obj()
    if isinstance(name_or_obj, dict):
        return deserialize(name_or_obj)
    if isinstance(name_or_obj, str):
        cls = _OPTIMIZERS.get(name_or_obj.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {name_or_obj!r}; choose one of "
                             f"{sorted(_OPTIMIZERS)}")
        return cls()
    raise TypeError(f"optimizer must be a name or an Optimizer, got {type(name_or_obj).__name__}")


# ---------------------------------------------------------------------------------
# Learning-rate schedules: schedule(step, base_lr) -> lr, steps counted from 0
# ---------------------------------------------------------------------------------
class LRSchedule:
    """Base of the schedules: ``schedule(step, base_lr) -> lr``, steps counted from 0.

    A step is an epoch or a batch, as the schedule is used:
    ``callbacks.LearningRateScheduler(schedule)`` evaluates it at every epoch,
    ``LearningRateScheduler(schedule, unit="batch")`` before every batch (the step is then
    the optimizer's update count, ``optimizer.iterations``). Each schedule is the closed
    form of its PyTorch namesake. ``get_lr(step, base_lr)`` is the same call under a name.
    """

    def __call__(self, epoch, base_lr) -> float:
        epoch = V.non_negative_int(epoch, "epoch")
        return float(self._lr(epoch, V.number(base_lr, "base_lr", low=0.0)))

    def get_lr(self, epoch, base_lr) -> float:
        """The learning rate for ``epoch`` (from 0) given the initial rate ``base_lr``."""
        return self(epoch, base_lr)

    def get_config(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class StepLR(LRSchedule):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (PyTorch's ``StepLR``)."""

    def __init__(self, step_size, gamma=0.1):
        self.step_size = V.positive_int(step_size, "step_size")
        self.gamma = V.number(gamma, "gamma", low=0.0, low_open=True)

    def _lr(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRSchedule):
    """``lr = base_lr * gamma ** epoch`` (PyTorch's ``ExponentialLR``)."""

    def __init__(self, gamma):
        self.gamma = V.number(gamma, "gamma", low=0.0, low_open=True)

    def _lr(self, epoch, base_lr):
        return base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRSchedule):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``.

    The closed form of PyTorch's ``CosineAnnealingLR`` (base_lr at epoch 0, eta_min at
    epoch T_max, and periodic after it).
    """

    def __init__(self, T_max, eta_min=0.0):
        self.T_max = V.positive_int(T_max, "T_max")
        self.eta_min = V.number(eta_min, "eta_min", low=0.0)

    def _lr(self, epoch, base_lr):
        cos = math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + cos) / 2


class LinearLR(LRSchedule):
    """``lr = base_lr * (start_factor + (end_factor - start_factor) * min(step, total_iters) /
    total_iters)`` (PyTorch's ``LinearLR``): a linear warm-up from ``start_factor * base_lr``
    to ``end_factor * base_lr`` over ``total_iters`` steps, constant after."""

    def __init__(self, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor = V.number(start_factor, "start_factor", low=0.0, high=1.0)
        self.end_factor = V.number(end_factor, "end_factor", low=0.0, high=1.0)
        self.total_iters = V.positive_int(total_iters, "total_iters")

    def _lr(self, step, base_lr):
        frac = min(step, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class OneCycleLR(LRSchedule):
    """The one-cycle policy (Smith & Topin), PyTorch's ``OneCycleLR`` with
    ``cycle_momentum=False``, meant to step every batch.

    From ``max_lr / div_factor`` the rate rises to ``max_lr`` over the first ``pct_start *
    total_steps`` steps, then anneals to ``max_lr / (div_factor * final_div_factor)`` at step
    ``total_steps - 1`` (``three_phase``: back down to the initial rate first, then to the
    minimum). Phase ends and annealing as PyTorch's: phase 1 ends at step ``pct_start *
    total_steps - 1``; ``"cos"`` annealing is ``end + (start - end) * (1 + cos(pi * pct)) /
    2``, ``"linear"`` ``start + (end - start) * pct``.

    Parameters
    ----------
    total_steps : int
        Number of steps in the cycle (epochs x batches per epoch when stepped per batch).
        A step beyond it raises ValueError (as PyTorch).
    max_lr : float or None
        None: the optimizer's learning rate (``base_lr``). PyTorch requires it.
    pct_start, anneal_strategy, div_factor, final_div_factor, three_phase
        As PyTorch's.
    """

    def __init__(self, total_steps, max_lr=None, pct_start=0.3, anneal_strategy="cos",
                 div_factor=25.0, final_div_factor=1e4, three_phase=False):
        self.total_steps = V.positive_int(total_steps, "total_steps")
        self.max_lr = None if max_lr is None else V.number(max_lr, "max_lr", low=0.0, low_open=True)
        self.pct_start = V.number(pct_start, "pct_start", low=0.0, high=1.0, low_open=True,
                                  high_open=True)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = V.number(div_factor, "div_factor", low=0.0, low_open=True)
        self.final_div_factor = V.number(final_div_factor, "final_div_factor", low=0.0, low_open=True)
        self.three_phase = bool(three_phase)

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lr(self, step, base_lr):
        if step >= self.total_steps:
            raise ValueError(f"OneCycleLR was asked for step {step}, beyond its total_steps="
                             f"{self.total_steps} (steps count from 0)")
        top = base_lr if self.max_lr is None else self.max_lr
        initial = top / self.div_factor
        low = initial / self.final_div_factor
        up = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            phases = [(up, initial, top),
                      (float(2 * self.pct_start * self.total_steps) - 2, top, initial),
                      (self.total_steps - 1, initial, low)]
        else:
            phases = [(up, initial, top), (self.total_steps - 1, top, low)]
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                return self._anneal(start_lr, end_lr, (step - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover


class WarmupCosineLR(LRSchedule):
    """A linear warm-up, then cosine annealing: PyTorch's ``SequentialLR`` of
    ``LinearLR(start_factor, 1.0, warmup_steps)`` and ``CosineAnnealingLR(total_steps -
    warmup_steps, eta_min)`` in closed form::

        step < warmup_steps:  lr = base_lr * (start_factor + (1 - start_factor) * step / warmup_steps)
        otherwise:            lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T)) / 2,
                              t = min(step - warmup_steps, T), T = total_steps - warmup_steps

    so the rate is ``base_lr`` at the end of the warm-up and ``eta_min`` from step
    ``total_steps`` on (Keras's ``CosineDecay`` with ``warmup_steps`` has the same shape).
    """

    def __init__(self, warmup_steps, total_steps, start_factor=0.0, eta_min=0.0):
        self.warmup_steps = V.non_negative_int(warmup_steps, "warmup_steps")
        self.total_steps = V.positive_int(total_steps, "total_steps")
        if self.total_steps <= self.warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must be larger than warmup_steps "
                             f"({warmup_steps})")
        self.start_factor = V.number(start_factor, "start_factor", low=0.0, high=1.0)
        self.eta_min = V.number(eta_min, "eta_min", low=0.0)

    def _lr(self, step, base_lr):
        w = self.warmup_steps
        if step < w:
            return base_lr * (self.start_factor + (1.0 - self.start_factor) * step / w)
        T = self.total_steps - w
        t = min(step - w, T)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / T)) / 2
