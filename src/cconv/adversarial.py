"""Adversarial examples: the fast gradient sign method (FGSM).

Goodfellow, Shlens and Szegedy (2015), "Explaining and harnessing adversarial examples":
move every pixel by ``eps`` in the direction that increases the loss,
``x_adv = clip(x + eps * sign(dL/dx))``. Perturbations far below what a person notices
(a few grey levels out of 255) can change a network's answers; :func:`robustness_report`
measures how test accuracy falls as ``eps`` grows.
"""
import numpy as np

from . import _draw
from . import _validate as V

__all__ = ["fgsm", "robustness_report"]

DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


def _check_clip(clip):
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ValueError(f"clip must be None or a pair (low, high), got {clip!r}") from None
    if not lo < hi:
        raise ValueError(f"clip must have low < high, got {clip!r}")
    return lo, hi


def _check_eps(eps):
    if isinstance(eps, bool):
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a non-negative number, got {eps!r}") from None
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    return eps


def _loss_gradient_sign(model, x, y, loss, batch_size):
    """sign(dL/dx) for every sample, computed batch by batch in inference mode."""
    if loss is None and not getattr(model, "compiled", False):
        loss = "categorical_crossentropy"
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got x of shape {x.shape} "
                         f"and y of shape {y.shape}")
    out = np.empty(x.shape, dtype=np.float32 if x.dtype != np.float64 else np.float64)
    for lo in range(0, x.shape[0], batch_size):
        g = model.input_gradient(x[lo:lo + batch_size], y[lo:lo + batch_size], loss=loss)
        out[lo:lo + batch_size] = np.sign(g)
    return out


def fgsm(model, x, y, eps, clip=(0.0, 1.0), loss=None, batch_size=128):
    """Fast gradient sign method: ``clip(x + eps * sign(dL/dx))``.

    Parameters
    ----------
    model : Model (a Sequential or a functional model)
        A built model; its compiled loss is used unless ``loss`` is given (an uncompiled
        model defaults to ``"categorical_crossentropy"``).
    x : ndarray of shape (N, *input_shape)
        Clean inputs.
    y : ndarray of shape (N,) (integer labels) or as the loss expects
        True labels.
    eps : float >= 0
        Size of the perturbation of each input value (in the units of ``x``; for images
        in [0, 1], ``1/255`` is one grey level).
    clip : (float, float) or None, default (0, 1)
        Valid range of the inputs; None disables clipping.
    loss : str or loss object, optional
    batch_size : int, default 128
        Gradients are computed this many samples at a time (bounds the memory).

    Returns
    -------
    ndarray of x's shape, float32 (float64 if x is float64)

    The gradient is taken in inference mode (dropout off), and the model's parameters,
    gradients and state are left unchanged.
    """
    eps = _check_eps(eps)
    clip = _check_clip(clip)
    batch_size = V.positive_int(batch_size, "batch_size")
    sign = _loss_gradient_sign(model, x, y, loss, batch_size)
    return _perturb(np.asarray(x, dtype=sign.dtype), sign, eps, clip)


def _perturb(x, sign, eps, clip):
    adv = x + sign.dtype.type(eps) * sign
    if clip is not None:
        np.clip(adv, clip[0], clip[1], out=adv)
    return adv


def _accuracy(model, x, y, batch_size):
    pred = model.predict(x, batch_size=batch_size)
    y = np.asarray(y)
    labels = y.argmax(axis=-1) if y.ndim == 2 else y
    return float(np.mean(pred.argmax(axis=-1) == labels))


def robustness_report(model, x, y, eps_values=DEFAULT_EPS, path=None, clip=(0.0, 1.0), loss=None,
                      batch_size=128, verbose=True):
    """Accuracy on FGSM examples for several perturbation sizes.

    The loss gradient is computed once at the clean inputs; each ``eps`` then gives
    ``clip(x + eps * sign(grad))`` (which is FGSM for that ``eps``).

    Parameters
    ----------
    model : Model (a Sequential or a functional model)
    x, y : ndarray
        Test inputs and labels.
    eps_values : sequence of float, default (0, 1/255, 2/255, 4/255, 8/255)
    path : str or os.PathLike, optional
        Also write a PNG of accuracy against ``eps`` (see :mod:`cconv.viz`).
    clip, loss, batch_size
        As in :func:`fgsm`.
    verbose : bool, default True
        Print the table.

    Returns
    -------
    list of (float, float)
        ``(eps, accuracy)`` rows in the order of ``eps_values``.
    """
    eps_values = [_check_eps(e) for e in eps_values]
    if not eps_values:
        raise ValueError("eps_values is empty")
    clip = _check_clip(clip)
    batch_size = V.positive_int(batch_size, "batch_size")
    sign = _loss_gradient_sign(model, x, y, loss, batch_size)
    x = np.asarray(x, dtype=sign.dtype)
    rows = []
    for eps in eps_values:
        adv = _perturb(x, sign, eps, clip) if eps > 0 else x
        rows.append((eps, _accuracy(model, adv, y, batch_size)))
    if verbose:
        print(format_table(rows))
    if path is not None:
        series = [("FGSM", [e * 255 for e, _ in rows], [a for _, a in rows])]
        _draw.line_figure([{"title": "test accuracy under FGSM", "xlabel": "eps (grey levels out of 255)",
                           "ylabel": "accuracy", "series": series, "ylim": (0.0, 1.02),
                           "legend": "upper right"}], path, size=(600, 400))
    return rows


def format_table(rows):
    """The ``(eps, accuracy)`` rows as a plain-text table."""
    lines = ["     eps   eps*255   accuracy", "--------  --------  ---------"]
    for eps, acc in rows:
        lines.append(f"{eps:8.5f}  {eps * 255:8.2f}  {acc * 100:8.2f}%")
    return "\n".join(lines)
