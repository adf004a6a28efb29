"""Loss functions and the accuracy metric.

A loss is an object called as ``loss(pred, y) -> float`` (the mean over the batch) whose
``backward()`` returns the gradient of that number with respect to ``pred`` for the last
call, already divided by the batch size, in ``pred``'s dtype. The order is cconv's
``(pred, y)``: predictions first, targets second (Keras's functions take ``(y_true,
y_pred)``; integer labels passed as ``pred`` raise a TypeError that says so).

>>> loss = SoftmaxCrossEntropy()          # takes probabilities, e.g. a softmax output
>>> value = loss(probs, labels)           # doctest: +SKIP
>>> dprobs = loss.backward()              # doctest: +SKIP

Probabilities or logits
-----------------------
As in Keras, the cross-entropies take probabilities unless ``from_logits=True``. A model
that ends with a softmax (sigmoid) and is compiled with :class:`SoftmaxCrossEntropy`
(:class:`BinaryCrossEntropy`) still trains on the logits: ``fit`` hands the loss the values
before that last activation together with :meth:`Loss.with_logits`, whose fused gradient
``(softmax(z) - onehot) / N`` is exact and cannot overflow. The two mistakes are refused:
``from_logits=False`` on values outside ``[0, 1]`` (logits given as probabilities), and
``from_logits=True`` on rows that are plainly probabilities (non-negative, summing to 1: a
softmax applied twice); compiling a model that ends with a softmax with a
``from_logits=True`` cross-entropy is refused too.

Sample weights
--------------
Every loss takes ``loss(pred, y, sample_weight=w)`` with one non-negative weight per sample:
the value is then ``sum_i w_i L_i / N`` (Keras's "sum over batch size" reduction: a weight
of 2 counts a sample twice, zeros remove samples without changing the divisor) and
``backward()`` scales each sample's gradient by its weight. ``fit(sample_weight=...,
class_weight=...)`` uses this.

What a model asks a loss
------------------------
``check_target(y, output_shape)`` validates and converts the targets for an output
(labels or one-hot rows for the cross-entropy); ``fuses_with`` names the final activation
the loss can absorb (``"softmax"``, ``"sigmoid"`` or None) and :meth:`Loss.with_logits` gives
the loss that takes the values before it; ``accuracy(pred, y)`` is the metric (argmax for
several classes, a threshold of 0.5, or 0 on logits, for one output), None when it does not
apply.

``get(name)`` maps ``"categorical_crossentropy"`` / ``"softmax_cross_entropy"`` /
``"sparse_categorical_crossentropy"``, ``"mse"`` / ``"mean_squared_error"`` and
``"binary_crossentropy"`` to loss objects.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from . import _registry
from . import _validate as V

__all__ = ["Loss", "SoftmaxCrossEntropy", "MeanSquaredError", "BinaryCrossEntropy",
           "accuracy", "check_sample_weight", "get", "serialize", "deserialize"]

_PROB_EPS = 1e-7     # clipping of probabilities when a loss is given probabilities (Keras's)
_SUM_TOL = 1e-3      # how far a row of probabilities (targets or predictions) may sum from 1


def _pred_array(pred, ndim=None):
    pred = np.asarray(pred)
    if pred.dtype not in (np.float32, np.float64):
        if pred.dtype.kind in "iub":
            raise TypeError(f"pred has dtype {pred.dtype} (shape {pred.shape}): it looks like "
                            f"labels. cconv's losses are called loss(pred, y), predictions "
                            f"first; Keras's take (y_true, y_pred)")
        raise TypeError(f"pred must be a float array, got dtype {pred.dtype} (shape {pred.shape})")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"pred must be {ndim}-D (N, classes), got shape {pred.shape}")
    if pred.ndim == 0:
        raise ValueError("pred must have a batch dimension, got a scalar")
    return pred


def _check_probabilities(loss, p):
    """``p`` must lie in [0, 1] for a loss that takes probabilities."""
    if p.size and not (np.min(p) >= 0.0 and np.max(p) <= 1.0):
        lo, hi = float(np.min(p)), float(np.max(p))
        raise ValueError(
            f"{type(loss).__name__}(from_logits=False) takes probabilities, but pred has values "
            f"in [{lo:.4g}, {hi:.4g}]. If these are logits (no final "
            f"{loss.fuses_with or 'activation'}), pass from_logits=True or end the model with "
            f"activation={loss.fuses_with!r}")


def _class_labels(y, n, k):
    """Integer labels (N,) or one-hot/soft targets (N, K) -> (labels or None, targets or None)."""
    y = np.asarray(y)
    if y.dtype.kind == "c" or y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold integer labels or one-hot rows, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1 and k != 1:
        y = y[:, 0]
    if y.ndim == 1:
        if y.shape[0] != n:
            raise ValueError(f"y has {y.shape[0]} labels but pred has {n} rows (x/y lengths "
                             f"differ)")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise ValueError("integer labels must be whole numbers; pass one-hot rows of "
                                 "shape (N, classes) for soft targets")
        labels = y.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            bad = labels[(labels < 0) | (labels >= k)]
            raise ValueError(f"labels must lie in [0, {k}) for pred with {k} classes, got "
                             f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''}")
        return labels, None
    if y.ndim == 2:
        if y.shape != (n, k):
            raise ValueError(f"one-hot y must have pred's shape {(n, k)}, got {y.shape}")
        return None, y
    raise ValueError(f"y must be integer labels (N,) or one-hot rows (N, {k}), got shape {y.shape}")


def _check_distributions(t):
    """Refuse target rows that are not probability distributions (one-hot or soft).

    Other values make the cross-entropy meaningless: ``5 * eye - 3`` gave negative losses.
    """
    if not t.size:
        return
    if not (np.all(np.isfinite(t)) and t.min() >= 0 and t.max() <= 1):
        raise ValueError(f"one-hot or soft targets must lie in [0, 1], got values from "
                         f"{t.min()!r} to {t.max()!r}")
    sums = t.sum(axis=1, dtype=np.float64)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOL)
    if bad.size:
        raise ValueError(f"each row of one-hot or soft targets must sum to 1; row {bad[0]} sums to "
                         f"{sums[bad[0]]:.6g} ({bad.size} of {len(t)} rows do not)")


def check_sample_weight(sample_weight, n, name="sample_weight"):
    """``sample_weight`` as a float64 vector of ``n`` finite non-negative weights
    (``(n,)`` or ``(n, 1)``)."""
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {w.dtype}")
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.shape != (n,):
        raise ValueError(f"{name} must have one weight per sample, shape ({n},), got {w.shape}")
    w = w.astype(np.float64)
    if n and not (np.all(np.isfinite(w)) and w.min() >= 0):
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        raise ValueError(f"{name} must be finite and >= 0; sample {bad[0]} has {w[bad[0]]!r}")
    return w


def _shape_str(shape):
    return "(" + ", ".join(["None"] + [str(s) for s in shape]) + ")"


class Loss:
    """Base class: ``__call__(pred, y) -> float`` and ``backward() -> dL/dpred``.

    Subclasses implement ``__call__`` (storing what the gradient needs in
    ``self._grad_args``) and ``_backward(*self._grad_args)``; they may refine
    :meth:`check_target`, :meth:`accuracy`, ``fuses_with`` and :meth:`with_logits`.
    """

    #: The canonical name accepted by :func:`get`.
    name = ""
    #: The final activation this loss can absorb ("softmax", "sigmoid") or None.
    fuses_with: str | None = None
    #: Whether pred are logits (the cross-entropies; False: probabilities).
    from_logits = False

    def __init__(self):
        self._grad_args = None
        self._weights = None

    def __call__(self, pred, y, sample_weight=None) -> float:
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        """Gradient of the last call's value with respect to ``pred`` (divided by batch size,
        each sample's row scaled by its weight when the call had ``sample_weight``)."""
        if self._grad_args is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a preceding call "
                               f"loss(pred, y)")
        g = self._backward(*self._grad_args)
        if self._weights is not None:
            g = g * self._weights.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)
        return g

    def _reduce(self, per_sample, sample_weight):
        """The batch value from the per-sample losses: their mean, or ``sum(w * L) / N``;
        remembers the weights for :meth:`backward`."""
        self._weights = None
        if sample_weight is None:
            return float(np.mean(per_sample, dtype=np.float64))
        w = check_sample_weight(sample_weight, per_sample.shape[0])
        self._weights = w
        return float(np.dot(per_sample.astype(np.float64, copy=False), w) / per_sample.shape[0])

    def with_logits(self) -> "Loss":
        """The same loss taking the values before the final activation (``from_logits=True``)."""
        if self.fuses_with is None:
            raise TypeError(f"{type(self).__name__} does not take logits")
        return type(self).from_config({**self.get_config(), "from_logits": True})

    def check_target(self, y, output_shape, name="y"):
        """Validate targets ``y`` (one row per sample) for an output of sample shape
        ``output_shape``; return them converted.

        The default wants ``y`` of the output's shape; ``(N,)`` is taken for a ``(1,)``
        output, and integer labels ``(N,)`` for a vector output (range-checked).
        """
        out_shape = tuple(output_shape)
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) or np.iscomplexobj(y):
            raise TypeError(f"{name} must hold real numbers, got dtype {y.dtype}")
        if y.shape[1:] == out_shape:
            return y
        if y.ndim == 1 and out_shape == (1,):
            return y.reshape(-1, 1)
        if y.ndim == 2 and y.shape[1] == 1 and np.issubdtype(y.dtype, np.integer) \
                and len(out_shape) == 1 and out_shape[0] > 1:
            y = y[:, 0]                                   # labels of shape (N, 1)
        if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(out_shape) == 1:
            k = out_shape[0]
            if y.size and (y.min() < 0 or y.max() >= k):
                raise ValueError(f"{name} has labels out of range for {k} outputs: "
                                 f"{np.unique(y[(y < 0) | (y >= k)])[:5].tolist()}")
            return y
        raise ValueError(f"{name} has shape {y.shape}, but the model's output is {_shape_str(out_shape)}")

    def accuracy(self, pred, y):
        """The accuracy of ``pred`` (what this loss receives) against ``y``; None for outputs
        that are not ``(N, classes)``."""
        pred = np.asarray(pred)
        if pred.ndim != 2:
            return None
        return accuracy(pred, y, threshold=0.0 if self.from_logits else 0.5)

    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments."""
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Loss":
        return cls(**config)

    def __repr__(self):
        cfg = self.get_config()
        default = type(self)().get_config()
        parts = [f"{k}={v!r}" for k, v in cfg.items() if default.get(k) != v]
        return f"{type(self).__name__}({', '.join(parts)})"


class SoftmaxCrossEntropy(Loss):
    """Categorical cross-entropy, of probabilities (default) or of logits.

    For probabilities ``p`` of a sample and targets ``t`` (one-hot, or smoothed)::

        L = -sum_k t_k log(clip(p_k, 1e-7, 1 - 1e-7))

    and with ``from_logits=True``, for logits ``z``, the fused and numerically stable::

        L = sum_k t_k * (logsumexp(z) - z_k),   logsumexp(z) = m + log sum_k exp(z_k - m)

    with ``m = max_k z_k`` so nothing overflows, whose gradient is ``(softmax(z) * sum(t) -
    t) / N``. The value returned is the mean of ``L`` over the batch.

    Parameters
    ----------
    label_smoothing : float in [0, 1)
        Targets become ``t * (1 - label_smoothing) + label_smoothing / K`` (as Keras and
        PyTorch).
    from_logits : bool, default False
        False: ``pred`` are probabilities (e.g. the output of a softmax layer; values
        outside [0, 1] raise ValueError). True: ``pred`` are logits (rows that are plainly
        probabilities raise ValueError: a softmax would be applied twice). A model ending
        with a softmax trains on the fused logits form either way (see the module docstring).

    Notes
    -----
    ``y`` may be integer labels ``(N,)`` (or ``(N, 1)``) in ``[0, K)`` or rows ``(N, K)`` of
    one-hot / probability targets. Labels out of range raise ``ValueError``.
    """

    name = "categorical_crossentropy"
    fuses_with = "softmax"

    def __init__(self, label_smoothing=0.0, from_logits=False):
        super().__init__()
        self.label_smoothing = V.number(label_smoothing, "label_smoothing", low=0.0, high=1.0,
                                        high_open=True)
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {"label_smoothing": self.label_smoothing, "from_logits": self.from_logits}

    def check_target(self, y, output_shape, name="y"):
        out_shape = tuple(output_shape)
        k = out_shape[-1]
        if y.ndim == 2 and y.shape[1] == 1 and k > 1:
            y = y[:, 0]                                   # labels of shape (N, 1)
        if y.ndim == 1:
            if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
                    or y.dtype == np.bool_):
                raise TypeError(f"{name} must hold integer class labels or one-hot rows, got dtype {y.dtype}")
            if not np.issubdtype(y.dtype, np.integer):
                if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                    raise ValueError(f"{name} holds non-integer values; class labels must be integers 0..{k - 1}")
                y = y.astype(np.int64)
            if y.size and (y.min() < 0 or y.max() >= k):
                bad = y[(y < 0) | (y >= k)]
                raise ValueError(f"{name} has labels out of range: the model has {k} output classes (labels "
                                 f"0..{k - 1}), got {np.unique(bad)[:5].tolist()}")
            return y.astype(np.int64, copy=False)
        if y.shape[1:] != out_shape:
            raise ValueError(f"one-hot {name} must have shape (N, {k}), got {y.shape}")
        return y

    def __call__(self, pred, y, sample_weight=None) -> float:
        z = _pred_array(pred, ndim=2)
        n, k = z.shape
        labels, t = _class_labels(y, n, k)
        if t is not None:
            _check_distributions(t)
        if n == 0:
            raise ValueError("pred is an empty batch (shape (0, K))")
        if t is not None and t.dtype.kind == "f" and np.all((z == 0) | (z == 1)) and np.any(
                (t > 0) & (t < 1)):
            raise ValueError("pred holds one-hot rows and y fractional values: the arguments look "
                             "swapped. cconv's losses are called loss(pred, y), predictions first; "
                             "Keras's take (y_true, y_pred)")
        ls = self.label_smoothing
        if not self.from_logits:
            _check_probabilities(self, z)
            p = np.clip(z, _PROB_EPS, 1.0 - _PROB_EPS)
            logp = np.log(p)
            if labels is not None:
                picked = logp[np.arange(n), labels]
                loss = -((1.0 - ls) * picked + (ls / k) * logp.sum(axis=1))
            else:
                tt = t * (1.0 - ls) + ls / k if ls else t
                loss = -np.sum(tt * logp, axis=1)
            self._grad_args = (z, p, labels, t)
            return self._reduce(loss, sample_weight)
        if k > 1 and np.min(z) >= 0.0 and np.max(z) <= 1.0 and np.all(
                np.abs(np.sum(z, axis=1, dtype=np.float64) - 1.0) < _SUM_TOL):
            raise ValueError("SoftmaxCrossEntropy(from_logits=True) was given rows of "
                             "probabilities (non-negative, each summing to 1): the softmax would "
                             "be applied twice. Pass the logits, or use from_logits=False (the "
                             "default) for probabilities")
        m = np.max(z, axis=1, keepdims=True)
        e = np.subtract(z, m)
        np.exp(e, out=e)
        s = np.sum(e, axis=1, keepdims=True)
        lse = (m + np.log(s))[:, 0]
        e /= s                                     # e is now softmax(z)
        if labels is not None:
            # sum(t) = 1: L = lse - (1 - ls) * z_y - ls * mean_k(z)
            loss = lse - (1.0 - ls) * z[np.arange(n), labels]
            if ls:
                loss -= ls * np.mean(z, axis=1)
        else:
            tt = t * (1.0 - ls) + ls / k if ls else t
            loss = lse * np.sum(tt, axis=1) - np.einsum("ij,ij->i", tt, z)
        self._grad_args = (z, e, labels, t)
        return self._reduce(loss, sample_weight)

    def accuracy(self, pred, y):
        """Categorical accuracy, as Keras's for this loss: the argmax of the scores against the
        labels, whatever the number of classes. A softmax over one output is 1 for every
        sample: its one class (label 0) is always predicted, as ``predict`` shows (a
        threshold on the logits would call them two classes)."""
        pred = np.asarray(pred)
        if pred.ndim != 2 or pred.shape[0] == 0:
            return super().accuracy(pred, y)
        return _categorical_accuracy(pred, y)

    def _backward(self, z, p, labels, t):
        n, k = z.shape
        ls = self.label_smoothing
        dtype = z.dtype
        if not self.from_logits:
            # d/dp of -sum(tt * log(clip(p))) / N (zero where the clip is active)
            if labels is not None:
                tt = np.full((n, k), ls / k)
                tt[np.arange(n), labels] += 1.0 - ls
            else:
                tt = t * (1.0 - ls) + ls / k if ls else t
            g = -tt / p
            g[(z < _PROB_EPS) | (z > 1.0 - _PROB_EPS)] = 0.0
            return (g / n).astype(dtype)
        if labels is not None:
            g = p.copy()
            g[np.arange(n), labels] -= dtype.type(1.0 - ls)
            if ls:
                g -= dtype.type(ls / k)
        else:
            tt = t * (1.0 - ls) + ls / k if ls else t
            g = p * np.sum(tt, axis=1, keepdims=True).astype(dtype)
            g -= tt.astype(dtype)
        g /= dtype.type(n)
        return g.astype(dtype, copy=False)


class MeanSquaredError(Loss):
    """Squared error with the convention of the theory: ``E = 1/2 sum_k (t_k - y_k)^2``.

    ``E`` is summed over a sample's outputs and averaged over the batch; so for ``D`` outputs
    per sample, ``E = (D / 2) * MSE`` where ``MSE`` is the usual mean over all elements
    (``torch.nn.MSELoss()``, Keras's ``mean_squared_error``). The gradient is
    ``(y - t) / N``.

    ``y`` must have ``pred``'s shape; ``(N,)`` targets are accepted for ``(N, 1)`` predictions,
    and integer labels ``(N,)`` for ``(N, K)`` predictions with ``K > 1`` are one-hot encoded.
    """

    name = "mean_squared_error"

    def __call__(self, pred, y, sample_weight=None) -> float:
        p = _pred_array(pred)
        t = np.asarray(y)
        if t.dtype.kind not in "biuf":
            raise TypeError(f"y must be a real array, got dtype {t.dtype}")
        n = p.shape[0]
        if t.shape != p.shape:
            if t.ndim == 1 and t.shape[0] == n and p.ndim == 2 and p.shape[1] == 1:
                t = t[:, None]
            elif t.ndim == 1 and t.dtype.kind in "iu" and p.ndim == 2 and t.shape[0] == n:
                labels, _ = _class_labels(t, n, p.shape[1])
                t = np.zeros(p.shape, p.dtype)
                t[np.arange(n), labels] = 1
            else:
                raise ValueError(f"y must have pred's shape {p.shape}, got {t.shape}"
                                 + (" (x/y lengths differ)" if t.shape[:1] != p.shape[:1] else ""))
        if n == 0:
            raise ValueError(f"pred is an empty batch (shape {p.shape})")
        diff = np.subtract(p, t, dtype=p.dtype)
        self._grad_args = (diff, n)
        if sample_weight is not None:
            d64 = diff.astype(np.float64, copy=False).reshape(n, -1)
            return self._reduce(0.5 * np.einsum("ij,ij->i", d64, d64), sample_weight)
        self._weights = None
        d64 = diff.astype(np.float64, copy=False).ravel()
        return float(0.5 * np.dot(d64, d64) / n)

    def _backward(self, diff, n):
        return diff / diff.dtype.type(n)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy of probabilities (default) or, with ``from_logits=True``, of
    logits (stable, like ``BCEWithLogitsLoss``).

    Per element, for a probability ``p`` (clipped to ``[1e-7, 1 - 1e-7]``) or a logit ``z``
    and a target ``t`` in ``[0, 1]``::

        l = -t log p - (1 - t) log(1 - p)
        l = max(z, 0) - z * t + log(1 + exp(-|z|))       # the same for p = sigmoid(z)

    averaged over a sample's outputs and then over the batch (Keras's and PyTorch's mean);
    from logits the gradient is ``(sigmoid(z) - t) / (number of elements)``.

    Parameters
    ----------
    from_logits : bool, default False
        False: ``pred`` are probabilities (values outside [0, 1] raise ValueError). A model
        ending with a sigmoid trains on the fused logits form (see the module docstring).
    """

    name = "binary_crossentropy"
    fuses_with = "sigmoid"

    def __init__(self, from_logits=False):
        super().__init__()
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {"from_logits": self.from_logits}

    def __call__(self, pred, y, sample_weight=None) -> float:
        z = _pred_array(pred)
        t = np.asarray(y)
        if t.dtype.kind not in "biuf":
            raise TypeError(f"y must be a real array, got dtype {t.dtype}")
        if t.shape != z.shape:
            if t.ndim == 1 and z.ndim == 2 and z.shape == (t.shape[0], 1):
                t = t[:, None]
            else:
                raise ValueError(f"y must have pred's shape {z.shape}, got {t.shape}"
                                 + (" (x/y lengths differ)" if t.shape[:1] != z.shape[:1] else ""))
        if z.size == 0:
            raise ValueError(f"pred is empty (shape {z.shape})")
        if t.size and (np.min(t) < 0 or np.max(t) > 1):
            raise ValueError(f"binary targets must lie in [0, 1], got values in "
                             f"[{np.min(t)}, {np.max(t)}]")
        t = t.astype(z.dtype, copy=False)
        if self.from_logits:
            loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        else:
            _check_probabilities(self, z)
            p = np.clip(z, _PROB_EPS, 1.0 - _PROB_EPS)
            loss = -(t * np.log(p) + (1 - t) * np.log1p(-p))
        self._grad_args = (z, t)
        if sample_weight is not None:
            return self._reduce(np.mean(loss.reshape(len(loss), -1), axis=1, dtype=np.float64),
                                sample_weight)
        self._weights = None
        return float(np.mean(loss, dtype=np.float64))

    def _backward(self, z, t):
        dtype = z.dtype
        if self.from_logits:
            g = expit(z)
            g -= t
        else:
            p = np.clip(z, _PROB_EPS, 1.0 - _PROB_EPS)
            g = (p - t) / (p * (1 - p))
            g[(z < _PROB_EPS) | (z > 1.0 - _PROB_EPS)] = 0.0
        g /= z.size
        return g.astype(dtype, copy=False)


def accuracy(pred, y, threshold=0.5) -> float:
    """Fraction of correct predictions.

    Parameters
    ----------
    pred : ndarray of shape (N, K) or (N, 1) / (N,)
        Scores, logits or probabilities. With ``K > 1`` the predicted class is the argmax;
        with a single output it is ``pred > threshold``.
    y : ndarray of shape (N,) int, or (N, K) one-hot
    threshold : float
        For single-output predictions: 0.5 for probabilities, pass 0.0 for logits.
    """
    pred = np.asarray(pred)
    y = np.asarray(y)
    n = pred.shape[0] if pred.ndim else 0
    if pred.ndim == 0 or n == 0:
        raise ValueError(f"pred must be a non-empty batch, got shape {pred.shape}")
    if y.shape[:1] != (n,):
        raise ValueError(f"y has shape {y.shape} but pred has {n} rows (x/y lengths differ)")
    if pred.ndim == 1 or (pred.ndim == 2 and pred.shape[1] == 1):
        p = (pred.reshape(n) > threshold)
        t = y.reshape(n) > 0.5 if y.size == n else None
        if t is None:
            raise ValueError(f"y of shape {y.shape} does not match single-output pred {pred.shape}")
        return float(np.mean(p == t))
    if pred.ndim != 2:
        raise ValueError(f"pred must be (N, K) scores, got shape {pred.shape}")
    return _categorical_accuracy(pred, y)


def _categorical_accuracy(pred, y):
    """The argmax of ``(N, K)`` scores against labels or one-hot rows, for any ``K``."""
    labels, t = _class_labels(y, pred.shape[0], pred.shape[1])
    if labels is None:
        labels = np.argmax(t, axis=1)
    return float(np.mean(np.argmax(pred, axis=1) == labels))


_LOSSES = {
    "categorical_crossentropy": SoftmaxCrossEntropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "sparse_categorical_crossentropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "binary_crossentropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
}
_CLASSES = {c.__name__: c for c in (SoftmaxCrossEntropy, MeanSquaredError, BinaryCrossEntropy)}


def serialize(loss) -> dict:
    """``{"class_name": "SoftmaxCrossEntropy", "config": {...}}``."""
    return _registry.serialize(loss, Loss, "a Loss")


def deserialize(d: dict) -> Loss:
    """Inverse of :func:`serialize`; unknown class -> ValueError."""
    return _registry.deserialize(d, _CLASSES, "loss")


def get(name_or_obj) -> Loss:
    """Resolve a ``loss=`` argument: a name, a Loss instance or class, or a serialized dict.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if isinstance(name_or_obj, Loss):
        return name_or_obj
    if isinstance(name_or_obj, type) and issubclass(name_or_obj, Loss):
        return name_or_obj()
    if isinstance(name_or_obj, dict):
        return deserialize(name_or_obj)
    if isinstance(name_or_obj, str):
        key = name_or_obj.lower()
        if key in _LOSSES:
            return _LOSSES[key]()
        if name_or_obj in _CLASSES:
            return _CLASSES[name_or_obj]()
        raise ValueError(f"unknown loss {name_or_obj!r}; choose one of {sorted(_LOSSES)}")
    raise TypeError(f"loss must be a name, a Loss or None, got {type(name_or_obj).__name__}")
