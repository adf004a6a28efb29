"""Preprocessing and augmentation layers, with Keras 3's names.

Augmentation (random in training, the identity at inference): :class:`RandomFlip`,
:class:`RandomTranslation`, :class:`RandomRotation`, :class:`RandomZoom`,
:class:`RandomContrast`, and :class:`RandomCrop` (a random window in training, the central
window at inference). Preprocessing (the same in both modes): :class:`Rescaling` and
:class:`Normalization` (with :meth:`Normalization.adapt`). They are ordinary layers: put
them at the front of a model and they are saved with it, and the model's inputs stay the
raw images::

    model = cconv.Sequential([
        Rescaling(1 / 255),
        RandomFlip("horizontal"), RandomTranslation(0.1, 0.1), RandomZoom(0.1),
        Conv2D(32, 3, activation="relu"), ...
    ], input_shape=(64, 64, 3), seed=0)

Every layer here is also importable from :mod:`cconv.layers`.

Randomness
----------
Each random layer owns a ``numpy.random.Generator``, seeded from ``seed`` or, when that is
None, from the model's seed when the model builds it (as :class:`cconv.layers.Dropout`): the
same model seed gives the same augmentations, and ``fit`` checkpoints hold the generators'
states, so a resumed run is bit-identical. A batch draws its parameters (one set per image)
in a fixed order before transforming anything.

Inference
---------
``inference_identity`` (a class attribute; a property for :class:`RandomCrop`) is True for
the layers that return their input unchanged when ``training`` is False: exporters (ONNX)
may replace them by an identity. :class:`RandomCrop` crops the central window at inference
(:meth:`RandomCrop.inference_box`); :class:`Rescaling` and :class:`Normalization` are affine
maps (``y = x * scale + offset``).

Gradients
---------
Every layer here has its exact input gradient: the flip of ``dy``, the crop's zero padding,
the adjoint of the resampling (a scatter of ``dy`` with the bilinear weights, as costly as
the forward pass), the contrast's closed form (zero where the output was clipped), and a
scale for the two affine layers. A model whose first layers these are never computes them
during training (nothing upstream needs them); the input gradients of :mod:`cconv.viz` and
:mod:`cconv.adversarial` run in inference mode, where the augmentations are the identity.

Resampling
----------
Translation, rotation and zoom resample each image through an affine map of pixel
coordinates (pixel centres at integers, rotation and zoom about ``((W - 1) / 2, (H - 1) /
2)``, Keras's matrices), with ``interpolation`` "bilinear" or "nearest". Where the map
leaves the image, ``fill_mode`` decides (per integer pixel position, as
``scipy.ndimage.map_coordinates`` and Keras's JAX and NumPy backends): "reflect" (``d c b a
| a b c d | d c b a``), "mirror" (``d c b | a b c d | c b a``), "wrap" (``a b c d | a b c
d``), "nearest" (``a a a | a b c d | d d d``), "constant" (``fill_value``).
"""
import math
import numbers

import numpy as np

from . import _validate as V
from .layers import Layer

__all__ = ["RandomFlip", "RandomCrop", "RandomTranslation", "RandomRotation", "RandomZoom",
           "RandomContrast", "Rescaling", "Normalization", "LAYERS"]

_FILL_MODES = ("reflect", "mirror", "wrap", "nearest", "constant")
_INTERPOLATIONS = ("bilinear", "nearest")


def _seed(seed):
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return None if seed is None else int(seed)


def _factor_range(factor, name, low=-1.0, high=1.0, symmetric=True):
    """``(lower, upper)`` from a float (``(-f, f)``, or ``(f, f)`` when not ``symmetric``) or
    a pair, each in ``[low, high]``."""
    if isinstance(factor, (list, tuple)):
        if len(factor) != 2:
            raise ValueError(f"{name} must be a float or a pair (lower, upper), got {factor!r}")
        lo, hi = (V.number(f, name, low=low, high=high) for f in factor)
        if lo > hi:
            raise ValueError(f"{name} must be (lower, upper) with lower <= upper, got {factor!r}")
        return lo, hi
    f = V.number(factor, name, low=low, high=high)
    return (-abs(f), abs(f)) if symmetric else (f, f)


def _as_config(factor):
    return list(factor) if isinstance(factor, tuple) else factor


class _Random(Layer):
    """Base of the augmentation layers: a generator built from ``seed`` or the model's, and
    ``call`` that is the identity at inference."""

    _input_rank = 3
    inference_identity = True

    def __init__(self, seed=None, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self.seed = _seed(seed)
        self._rng = None

    def build(self, input_shape):
        seed = self.seed if self.seed is not None else int(self._weight_rng.integers(0, 2**63 - 1))
        self._rng = np.random.default_rng(seed)

    def get_config(self):
        return {"seed": self.seed, **super().get_config()}

    def call(self, x, training=False):
        if not training:
            return self._inference(x), None
        params = self._draw(x.shape)
        return self._transform(x, params), params

    def backward(self, dy, params):
        if not self.need_input_grad:
            return None
        if params is None:
            return self._inference_adjoint(dy)
        return self._adjoint(dy, params)

    def _inference(self, x):
        return x

    def _inference_adjoint(self, dy):
        return dy


# --------------------------------------------------------------------------------------
# Flip and crop
# --------------------------------------------------------------------------------------
class RandomFlip(_Random):
    """Flip each image left-right and/or upside down with probability 1/2 in training.

    Parameters
    ----------
    mode : {"horizontal", "vertical", "horizontal_and_vertical"}
        "horizontal" mirrors the width axis. With both, the two flips are drawn
        independently (Keras 3 draws one decision for both).
    seed : int, optional
    """

    def __init__(self, mode="horizontal_and_vertical", seed=None, name=None, trainable=True):
        super().__init__(seed=seed, name=name, trainable=trainable)
        if mode not in ("horizontal", "vertical", "horizontal_and_vertical"):
            raise ValueError(f"mode must be 'horizontal', 'vertical' or 'horizontal_and_vertical', "
                             f"got {mode!r}")
        self.mode = mode

    def get_config(self):
        return {"mode": self.mode, **super().get_config()}

    def _draw(self, shape):
        u = self._rng.random((shape[0], 2))
        h = (u[:, 0] < 0.5) & (self.mode != "vertical")
        v = (u[:, 1] < 0.5) & (self.mode != "horizontal")
        return h, v

    def _transform(self, x, params):
        h, v = params
        y = x.copy()
        y[h] = y[h, :, ::-1]
        y[v] = y[v, ::-1]
        return y

    _adjoint = _transform                  # a flip is its own transpose


class RandomCrop(_Random):
    """Crop a random ``height x width`` window of each image in training, the central one
    at inference.

    Keras 3 crops one window per batch and resizes at inference; here every image gets its
    own window, and inference takes the central window (``top = (H - height) // 2``), the
    usual pairing with a random crop in training.

    Parameters
    ----------
    height, width : int
        At most the input's height and width.
    seed : int, optional
    """

    def __init__(self, height, width, seed=None, name=None, trainable=True):
        super().__init__(seed=seed, name=name, trainable=trainable)
        self.height = V.positive_int(height, "height")
        self.width = V.positive_int(width, "width")

    def get_config(self):
        return {"height": self.height, "width": self.width, **super().get_config()}

    @property
    def inference_identity(self):
        """True when the window is the whole input (known once built)."""
        return self.input_shape is not None and tuple(self.input_shape[:2]) == (self.height, self.width)

    def compute_output_shape(self, input_shape):
        H, W, C = input_shape
        if H < self.height or W < self.width:
            raise ValueError(f"{self._label()}: cannot crop {self.height}x{self.width} out of an input "
                             f"of {H}x{W}")
        return (self.height, self.width, C)

    def inference_box(self, input_shape):
        """``(top, left, height, width)`` of the window cropped at inference."""
        H, W = input_shape[:2]
        return (H - self.height) // 2, (W - self.width) // 2, self.height, self.width

    def _draw(self, shape):
        n, H, W = shape[:3]
        top = self._rng.integers(0, H - self.height + 1, n)
        left = self._rng.integers(0, W - self.width + 1, n)
        return top, left, shape

    def _window_index(self, top, left):
        rows = top[:, None] + np.arange(self.height)                  # (N, h)
        cols = left[:, None] + np.arange(self.width)                  # (N, w)
        n = np.arange(len(top))[:, None, None]
        return n, rows[:, :, None], cols[:, None, :]

    def _transform(self, x, params):
        top, left, _ = params
        return np.ascontiguousarray(x[self._window_index(top, left)])

    def _adjoint(self, dy, params):
        top, left, shape = params
        dx = np.zeros(shape, dy.dtype)
        dx[self._window_index(top, left)] = dy
        return dx

    def _inference(self, x):
        t, l, h, w = self.inference_box(x.shape[1:])
        return np.ascontiguousarray(x[:, t:t + h, l:l + w])

    def backward(self, dy, params):
        if not self.need_input_grad:
            return None
        if params is None:
            H, W, C = self.input_shape
            t, l, h, w = self.inference_box((H, W))
            dx = np.zeros((dy.shape[0], H, W, C), dy.dtype)
            dx[:, t:t + h, l:l + w] = dy
            return dx
        return self._adjoint(dy, params)


# --------------------------------------------------------------------------------------
# Affine resampling
# --------------------------------------------------------------------------------------
def _fill_index(i, size, mode):
    """Integer positions mapped into ``[0, size)`` by the fill mode, and for "constant" the
    mask of the positions inside (None for the other modes)."""
    if mode == "constant":
        return np.clip(i, 0, size - 1), (i >= 0) & (i < size)
    if mode == "nearest":
        return np.clip(i, 0, size - 1), None
    if mode == "wrap":
        return np.mod(i, size), None
    if mode == "reflect":                         # d c b a | a b c d | d c b a
        j = np.mod(i, 2 * size)
        return np.where(j >= size, 2 * size - 1 - j, j), None
    if size == 1:                                 # mirror: d c b | a b c d | c b a
        return np.zeros_like(i), None
    j = np.mod(i, 2 * size - 2)
    return np.where(j >= size, 2 * size - 2 - j, j), None


class _Resampling:
    """Where each output pixel reads for the output-to-input maps ``A`` (N, 2, 3): the 1
    (nearest) or 4 (bilinear) taps as flat positions into ``(N * H * W)`` with their weights.

    The fill mode maps integer positions through two small lookup tables (rows and
    columns) that cover the range the maps reach (an affine map reaches its extremes at the
    grid's corners), so the per-pixel work is a few gathers and products on flat arrays.
    With "constant", a tap outside the image keeps a zero weight and ``fill`` holds the
    weight it gives to ``fill_value``.
    """

    def __init__(self, A, shape, fill_mode, interpolation, dtype):
        n, H, W = shape[:3]
        nearest = interpolation == "nearest"
        ys, xs = np.meshgrid(np.arange(H, dtype=dtype), np.arange(W, dtype=dtype), indexing="ij")
        corners = np.array([[0, W - 1, 0, W - 1], [0, 0, H - 1, H - 1], [1, 1, 1, 1]], np.float64)
        reach = A @ corners                                             # (N, 2, 4)
        shift = 0.5 if nearest else 0.0
        lo = np.floor(reach.min(axis=(0, 2)) + shift).astype(np.intp) - 1
        hi = np.floor(reach.max(axis=(0, 2)) + shift).astype(np.intp) + 2
        A = A.astype(dtype)
        # coordinates shifted by -lo, so that they are positive and truncation is floor
        sx = A[:, 0, 0, None, None] * xs + A[:, 0, 1, None, None] * ys + \
            (A[:, 0, 2, None, None] + dtype(shift - lo[0]))
        sy = A[:, 1, 0, None, None] * xs + A[:, 1, 1, None, None] * ys + \
            (A[:, 1, 2, None, None] + dtype(shift - lo[1]))
        np.maximum(sx, 0, out=sx)
        np.maximum(sy, 0, out=sy)
        xf, yf = np.floor(sx), np.floor(sy)
        x0, y0 = xf.astype(np.intp), yf.astype(np.intp)
        cols, col_ok = _fill_index(np.arange(lo[0], hi[0] + 1), W, fill_mode)
        rows, row_ok = _fill_index(np.arange(lo[1], hi[1] + 1), H, fill_mode)
        base = (np.arange(n) * (H * W))[:, None, None]
        if nearest:
            r = base + rows[y0] * W
            w = None
            if col_ok is not None:
                w = (row_ok[y0] & col_ok[x0]).astype(dtype)
            self.taps = [((r + cols[x0]).ravel(), None if w is None else w.ravel())]
            self.fill = None if w is None else (1 - w).ravel()
            return
        fx, fy = np.subtract(sx, xf, out=sx), np.subtract(sy, yf, out=sy)
        gx, gy = 1 - fx, 1 - fy
        c0, c1 = cols[x0], cols[x0 + 1]
        r0, r1 = base + rows[y0] * W, base + rows[y0 + 1] * W
        taps = [(r0 + c0, gx * gy), (r0 + c1, fx * gy), (r1 + c0, gx * fy), (r1 + c1, fx * fy)]
        self.fill = None
        if col_ok is not None:
            oks = [(row_ok[y0], col_ok[x0]), (row_ok[y0], col_ok[x0 + 1]),
                   (row_ok[y0 + 1], col_ok[x0]), (row_ok[y0 + 1], col_ok[x0 + 1])]
            fill = np.zeros_like(fx)
            for (_, w), (ra, ca) in zip(taps, oks):
                out = ~(ra & ca)
                fill += w * out
                w[out] = 0
            self.fill = fill.ravel()
        self.taps = [(i.ravel(), w.ravel()) for i, w in taps]


def _axis_taps(scale, offset, size, fill_mode, interpolation, dtype):
    """1-D taps of the maps ``k -> scale[n] * k + offset[n]`` (k < size) for a separable
    resampling: a list of ``(positions (N, size), weights (N, size) or None)`` in
    ``[0, size)`` and the weight of ``fill_value`` (None unless "constant")."""
    nearest = interpolation == "nearest"
    s = scale[:, None] * np.arange(size) + offset[:, None] + (0.5 if nearest else 0.0)
    lo = int(np.floor(s.min())) - 1
    hi = int(np.floor(s.max())) + 2
    table, ok = _fill_index(np.arange(lo, hi + 1), size, fill_mode)
    f = np.floor(s)
    i0 = f.astype(np.intp) - lo
    if nearest:
        w = None if ok is None else ok[i0].astype(dtype)
        return [(table[i0], w)], None if w is None else 1 - w
    frac = (s - f).astype(dtype)
    taps = [(table[i0], 1 - frac), (table[i0 + 1], frac)]
    fill = None
    if ok is not None:
        fill = np.zeros_like(frac)
        for (_, w), good in zip(taps, (ok[i0], ok[i0 + 1])):
            fill += w * ~good
            w[~good] = 0
    return taps, fill


def _resample_separable(x, A, fill_mode, interpolation, fill_value):
    """Resample with maps that act on each axis alone (translation, zoom): the rows of each
    image first (gathers of whole rows), then the columns (gathers within each row), each a
    1-D interpolation; no transposition of the images."""
    n, H, W, C = x.shape
    dt = x.dtype.type
    rows, rfill = _axis_taps(A[:, 1, 1], A[:, 1, 2], H, fill_mode, interpolation, dt)
    cols, cfill = _axis_taps(A[:, 0, 0], A[:, 0, 2], W, fill_mode, interpolation, dt)
    flat = x.reshape(n * H, W * C)
    base = (np.arange(n) * H)[:, None]
    t = None
    for idx, w in rows:
        v = np.take(flat, (base + idx).ravel(), axis=0)
        if w is not None:
            v *= w.reshape(-1, 1)
        t = v if t is None else np.add(t, v, out=t)
    if rfill is not None and fill_value:
        t += rfill.reshape(-1, 1) * dt(fill_value)
    t = t.reshape(n, H, W * C)
    chan = np.arange(C)
    out = None
    for idx, w in cols:
        within = (idx[:, :, None] * C + chan).reshape(n, 1, W * C)     # a column's C values
        v = np.take_along_axis(t, within, axis=2)
        if w is not None:
            v *= np.repeat(w, C, axis=1).reshape(n, 1, W * C)
        out = v if out is None else np.add(out, v, out=out)
    if cfill is not None and fill_value:
        out += np.repeat(cfill, C, axis=1).reshape(n, 1, W * C) * dt(fill_value)
    return out.reshape(x.shape)


class _Affine(_Random):
    """Random affine resampling: subclasses draw the maps from output to input pixels."""

    def __init__(self, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0,
                 name=None, trainable=True):
        super().__init__(seed=seed, name=name, trainable=trainable)
        if fill_mode not in _FILL_MODES:
            raise ValueError(f"fill_mode must be one of {_FILL_MODES}, got {fill_mode!r}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        self.fill_mode, self.interpolation = fill_mode, interpolation
        self.fill_value = V.number(fill_value, "fill_value")

    def get_config(self):
        return {"fill_mode": self.fill_mode, "interpolation": self.interpolation,
                "fill_value": self.fill_value, **super().get_config()}

    def _draw(self, shape):
        return self._maps(shape), shape

    def _transform(self, x, params):
        A, shape = params
        if not (A[:, 0, 1].any() or A[:, 1, 0].any()):
            return _resample_separable(x, A, self.fill_mode, self.interpolation, self.fill_value)
        plan = _Resampling(A, shape, self.fill_mode, self.interpolation, x.dtype.type)
        n, H, W, C = x.shape
        # channel planes: 1-D gathers and products, far faster than rows of C values
        planes = np.ascontiguousarray(np.moveaxis(x, 3, 0)).reshape(C, -1)
        out = np.empty((C, n * H * W), x.dtype)
        tmp = np.empty(n * H * W, x.dtype)
        for c in range(C):
            acc = out[c]
            for k, (idx, w) in enumerate(plan.taps):
                dst = acc if k == 0 else tmp
                np.take(planes[c], idx, out=dst)
                if w is not None:
                    dst *= w
                if k:
                    acc += tmp
            if plan.fill is not None and self.fill_value:
                acc += plan.fill * x.dtype.type(self.fill_value)
        return np.ascontiguousarray(np.moveaxis(out.reshape(C, n, H, W), 0, 3))

    def _adjoint(self, dy, params):
        A, shape = params
        plan = _Resampling(A, shape, self.fill_mode, self.interpolation, dy.dtype.type)
        n, H, W, C = shape
        size = n * H * W
        g = np.ascontiguousarray(np.moveaxis(dy, 3, 0)).reshape(C, -1)
        dx = np.zeros((C, size), np.float64)
        for c in range(C):
            for idx, w in plan.taps:
                dx[c] += np.bincount(idx, weights=g[c] if w is None else g[c] * w, minlength=size)
        return np.ascontiguousarray(np.moveaxis(dx.reshape(C, n, H, W), 0, 3)).astype(dy.dtype)


def _maps(a, b, tx, ty):
    """(N, 2, 3) maps ``(x, y) -> (a0 x + a1 y + tx, b0 x + b1 y + ty)``."""
    A = np.empty((len(tx), 2, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 0, 2] = a[0], a[1], tx
    A[:, 1, 0], A[:, 1, 1], A[:, 1, 2] = b[0], b[1], ty
    return A


class RandomTranslation(_Affine):
    """Shift each image by a random fraction of its size in training.

    Parameters
    ----------
    height_factor, width_factor : float or (lower, upper)
        Fractions of the height / width in ``[-1, 1]``; a float ``f`` means ``(-f, f)``. A
        positive shift moves the content down / right (Keras's convention).
    fill_mode, interpolation, seed, fill_value
        See the module docstring.
    """

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="bilinear",
                 seed=None, fill_value=0.0, name=None, trainable=True):
        super().__init__(fill_mode, interpolation, seed, fill_value, name, trainable)
        self.height_factor, self.width_factor = height_factor, width_factor
        self._h = _factor_range(height_factor, "height_factor")
        self._w = _factor_range(width_factor, "width_factor")

    def get_config(self):
        return {"height_factor": _as_config(self.height_factor),
                "width_factor": _as_config(self.width_factor), **super().get_config()}

    def _maps(self, shape):
        n, H, W = shape[:3]
        dy = self._rng.uniform(*self._h, n) * H
        dx = self._rng.uniform(*self._w, n) * W
        one, zero = np.ones(n), np.zeros(n)
        return _maps((one, zero), (zero, one), -dx, -dy)


class RandomRotation(_Affine):
    """Rotate each image about its centre by a random angle in training.

    Parameters
    ----------
    factor : float or (lower, upper)
        Fraction of a full turn: the angle is drawn uniformly from ``[lower * 2 pi, upper *
        2 pi]`` (a float ``f`` means ``(-f, f)``; small angles: ``0.05`` is +-18 degrees).
        Positive angles turn the content counter-clockwise (Keras's convention).
    fill_mode, interpolation, seed, fill_value
        See the module docstring.
    """

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, name=None, trainable=True):
        super().__init__(fill_mode, interpolation, seed, fill_value, name, trainable)
        self.factor = factor
        self._range = _factor_range(factor, "factor", low=-math.inf, high=math.inf)

    def get_config(self):
        return {"factor": _as_config(self.factor), **super().get_config()}

    def _maps(self, shape):
        n, H, W = shape[:3]
        theta = self._rng.uniform(*self._range, n) * 2 * math.pi
        c, s = np.cos(theta), np.sin(theta)
        cx, cy = (W - 1) / 2, (H - 1) / 2
        # input = R (output - centre) + centre, R = [[cos, -sin], [sin, cos]] (Keras's matrix)
        return _maps((c, -s), (s, c), cx - c * cx + s * cy, cy - s * cx - c * cy)


class RandomZoom(_Affine):
    """Zoom each image in or out about its centre by a random factor in training.

    Parameters
    ----------
    height_factor : float or (lower, upper)
        In ``[-1, 1]``: the vertical zoom is ``1 + u``, ``u`` drawn from the range (a float
        ``f`` means ``(-f, f)``); positive values zoom out (the content shrinks), negative
        values zoom in (Keras's convention).
    width_factor : float, (lower, upper) or None
        None: the same zoom as the height (the aspect ratio is kept).
    fill_mode, interpolation, seed, fill_value
        See the module docstring.
    """

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, name=None, trainable=True):
        super().__init__(fill_mode, interpolation, seed, fill_value, name, trainable)
        self.height_factor, self.width_factor = height_factor, width_factor
        self._h = _factor_range(height_factor, "height_factor")
        self._w = None if width_factor is None else _factor_range(width_factor, "width_factor")

    def get_config(self):
        return {"height_factor": _as_config(self.height_factor),
                "width_factor": _as_config(self.width_factor), **super().get_config()}

    def _maps(self, shape):
        n, H, W = shape[:3]
        zy = 1.0 + self._rng.uniform(*self._h, n)
        zx = zy if self._w is None else 1.0 + self._rng.uniform(*self._w, n)
        zero = np.zeros(n)
        return _maps((zx, zero), (zero, zy), (W - 1) / 2 * (1 - zx), (H - 1) / 2 * (1 - zy))


# --------------------------------------------------------------------------------------
# Contrast
# --------------------------------------------------------------------------------------
class RandomContrast(_Random):
    """Scale each image's deviation from its per-channel mean by a random factor in training:
    ``y = clip((x - mean) * c + mean, *value_range)`` with ``c`` drawn from ``[1 - lower, 1 +
    upper]`` (Keras's RandomContrast).

    Parameters
    ----------
    factor : float or (lower, upper)
        In ``[0, 1]``; a float ``f`` means ``(f, f)``.
    value_range : (low, high), default (0, 255)
        The range of the images (outputs are clipped to it; pass ``(0, 1)`` for images in
        ``[0, 1]``).
    seed : int, optional
    """

    def __init__(self, factor, value_range=(0, 255), seed=None, name=None, trainable=True):
        super().__init__(seed=seed, name=name, trainable=trainable)
        self.factor = factor
        self._range = _factor_range(factor, "factor", low=0.0, high=1.0, symmetric=False)
        try:
            lo, hi = (V.number(v, "value_range") for v in value_range)
        except TypeError:
            raise TypeError(f"value_range must be a pair (low, high), got {value_range!r}") from None
        if lo >= hi:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
        self.value_range = (lo, hi)

    def get_config(self):
        return {"factor": _as_config(self.factor), "value_range": list(self.value_range),
                **super().get_config()}

    def _draw(self, shape):
        lower, upper = self._range
        return self._rng.uniform(1.0 - lower, 1.0 + upper, shape[0])

    def _transform(self, x, c):
        cc = c.astype(x.dtype)[:, None, None, None]
        mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(x.dtype)
        y = (x - mean) * cc + mean
        return np.clip(y, *self.value_range, out=y)

    def call(self, x, training=False):
        if not training:
            return x, None
        c = self._draw(x.shape)
        y = self._transform(x, c)
        lo, hi = self.value_range
        inside = (y > lo) & (y < hi)
        return y, (c, None if inside.all() else inside)

    def _adjoint(self, dy, params):
        c, inside = params
        g = dy if inside is None else dy * inside
        cc = c.astype(dy.dtype)[:, None, None, None]
        mean = g.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(dy.dtype)
        return g * cc + (1 - cc) * mean


# --------------------------------------------------------------------------------------
# Rescaling and normalization
# --------------------------------------------------------------------------------------
class Rescaling(Layer):
    """``y = x * scale + offset``, in training and at inference (Keras's Rescaling):
    ``Rescaling(1 / 255)`` maps pixel values to ``[0, 1]``, ``Rescaling(1 / 127.5, -1)`` to
    ``[-1, 1]``.

    Parameters
    ----------
    scale : float
    offset : float, default 0.0
    """

    inference_identity = False

    def __init__(self, scale, offset=0.0, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self.scale = V.number(scale, "scale")
        self.offset = V.number(offset, "offset")

    def get_config(self):
        return {"scale": self.scale, "offset": self.offset, **super().get_config()}

    def call(self, x, training=False):
        y = x * x.dtype.type(self.scale)
        if self.offset:
            y += x.dtype.type(self.offset)
        return y, None

    def backward(self, dy, saved):
        if not self.need_input_grad:
            return None
        return dy * dy.dtype.type(self.scale)


class Normalization(Layer):
    """``y = (x - mean) / sqrt(variance)`` per feature along ``axis`` (Keras's
    Normalization), with the statistics from :meth:`adapt` or given.

    Parameters
    ----------
    axis : int or None, default -1
        The axis that keeps separate statistics (-1: per channel); None: one mean and
        variance for everything. Not the batch axis.
    mean, variance : float or sequence, optional
        Fixed statistics (both or neither); otherwise call :meth:`adapt` before training.
    invert : bool, default False
        Undo a normalization instead: ``y = x * sqrt(variance) + mean``.

    Attributes
    ----------
    state : {"mean", "variance", "count"}
        Saved with the model. ``count`` is the number of values per feature :meth:`adapt`
        saw (1 for given statistics, 0 before adapting: the layer then refuses to run).

    Notes
    -----
    The standard deviation is floored at 1e-7 (Keras's epsilon), so a constant feature
    maps to 0 instead of dividing by zero.
    """

    inference_identity = False
    _EPSILON = 1e-7

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        if axis is not None:
            axis = V.integer(axis, "axis")
            if axis == 0:
                raise ValueError("axis 0 is the batch axis: pick a feature axis (-1: channels) or None")
        self.axis = axis
        if (mean is None) != (variance is None):
            raise ValueError("pass both mean and variance, or neither (and call adapt)")
        self.mean = None if mean is None else [float(v) for v in np.atleast_1d(np.asarray(mean, float))]
        self.variance = None if variance is None else [float(v) for v in
                                                       np.atleast_1d(np.asarray(variance, float))]
        if self.variance is not None and (min(self.variance) < 0 or not all(map(math.isfinite, self.variance))):
            raise ValueError(f"variance must be finite and >= 0, got {variance!r}")
        self.invert = bool(invert)
        self._pending = None

    def get_config(self):
        return {"axis": self.axis, "mean": self.mean, "variance": self.variance,
                "invert": self.invert, **super().get_config()}

    def _stat_shape(self, input_shape):
        if self.axis is None:
            return (1,)
        rank = len(input_shape) + 1
        if not -rank < self.axis < rank or self.axis % rank == 0:
            raise ValueError(f"{self._label()}: axis {self.axis} is not a feature axis of inputs of "
                             f"shape (N, {', '.join(map(str, input_shape))})")
        return (input_shape[self.axis % rank - 1],)

    def compute_output_shape(self, input_shape):
        shape = self._stat_shape(tuple(input_shape))
        for what, v in (("mean", self.mean), ("variance", self.variance)):
            if v is not None and len(v) not in (1, shape[0]):
                raise ValueError(f"{self._label()}: {what} has {len(v)} values for {shape[0]} features")
        return tuple(input_shape)

    def build(self, input_shape):
        shape = self._stat_shape(input_shape)
        if self._pending is not None:
            mean, var, count = self._pending
            self._pending = None
        elif self.mean is not None:
            mean, var, count = np.asarray(self.mean), np.asarray(self.variance), 1
        else:
            mean, var, count = np.zeros(1), np.ones(1), 0
        self.add_weight("mean", shape, lambda s, r, d: np.broadcast_to(mean, s).astype(d), trainable=False)
        self.add_weight("variance", shape, lambda s, r, d: np.broadcast_to(var, s).astype(d), trainable=False)
        self.add_weight("count", (1,), lambda s, r, d: np.full(s, count, d), trainable=False)

    def adapt(self, data, batch_size=256):
        """Compute the mean and (population) variance of ``data``, batch by batch in float64.

        Parameters
        ----------
        data : ndarray of shape (N, ...), or a dataset / iterable of batches
            Batches may be arrays or tuples whose first element is ``x`` (a
            :class:`cconv.data.Dataset` of ``(x, y)`` works as it is).
        batch_size : int, default 256
            For arrays: how many samples to add at a time.

        Raises
        ------
        ValueError
            No samples; batches whose shapes disagree with each other or with the built layer.
        """
        batch_size = V.positive_int(batch_size, "batch_size")
        if isinstance(data, np.ndarray):
            batches = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
        elif callable(getattr(data, "batches", None)):
            batches = data.batches(0)
        else:
            batches = iter(data)
        count, mean, m2, sample_shape = 0, None, None, None
        for b, batch in enumerate(batches):
            x = np.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch, dtype=np.float64)
            if x.ndim < 2:
                raise ValueError(f"adapt: batch {b + 1} has shape {x.shape}; batches need a sample axis first")
            if sample_shape is None:
                sample_shape = x.shape[1:]
                if self.built and tuple(sample_shape) != tuple(self.input_shape):
                    raise ValueError(f"adapt: samples of shape {sample_shape}, the layer was built for "
                                     f"{tuple(self.input_shape)}")
                stat = self._stat_shape(sample_shape)
            elif x.shape[1:] != sample_shape:
                raise ValueError(f"adapt: batch {b + 1} has samples of shape {x.shape[1:]}, the first "
                                 f"batch {sample_shape}")
            if self.axis is None:
                rows = x.reshape(-1, 1)
            else:
                rows = np.moveaxis(x, self.axis % x.ndim, -1).reshape(-1, stat[0])
            k = rows.shape[0]
            if k == 0:
                continue
            bm = rows.mean(axis=0)
            bm2 = ((rows - bm) ** 2).sum(axis=0)
            if mean is None:
                count, mean, m2 = k, bm, bm2
            else:                                   # Chan et al.'s parallel update
                delta = bm - mean
                total = count + k
                mean = mean + delta * (k / total)
                m2 = m2 + bm2 + delta ** 2 * (count * k / total)
                count = total
        if mean is None:
            raise ValueError("adapt: the data holds no samples")
        var = m2 / count
        if self.built:
            self.state["mean"][...] = mean
            self.state["variance"][...] = var
            self.state["count"][...] = count
        else:
            self._pending = (mean, var, count)
        return self

    def statistics(self):
        """``(mean, std)`` per feature in float64: what the layer subtracts and divides by
        (``std`` floored at 1e-7). Raises a RuntimeError before :meth:`adapt`."""
        if float(self.state["count"][0]) == 0:
            raise RuntimeError(f"{self._label()}: call adapt(data) first, or pass mean= and variance=")
        std = np.maximum(np.sqrt(self.state["variance"].astype(np.float64)), self._EPSILON)
        return self.state["mean"].astype(np.float64), std

    def _params(self, dtype):
        mean, std = self.statistics()
        return mean.astype(dtype), std.astype(dtype)

    def _broadcast(self, a, ndim):
        if self.axis is None:
            return a.reshape((1,) * ndim)
        shape = [1] * ndim
        shape[self.axis % ndim] = a.shape[0]
        return a.reshape(shape)

    def call(self, x, training=False):
        mean, std = self._params(x.dtype)
        mean, std = self._broadcast(mean, x.ndim), self._broadcast(std, x.ndim)
        if self.invert:
            return x * std + mean, None
        return (x - mean) / std, None

    def backward(self, dy, saved):
        if not self.need_input_grad:
            return None
        _, std = self._params(dy.dtype)
        std = self._broadcast(std, dy.ndim)
        return dy * std if self.invert else dy / std


#: The layer classes of this module, by name (for :func:`cconv.layers.deserialize`).
LAYERS = {cls.__name__: cls for cls in (RandomFlip, RandomCrop, RandomTranslation, RandomRotation,
                                        RandomZoom, RandomContrast, Rescaling, Normalization)}
