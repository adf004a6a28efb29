"""Pictures that explain a CNN: training curves, feature maps, filters, feature
visualization by optimization, saliency maps.

Every function writes a PNG. It is drawn with matplotlib (Agg, no display needed) when
matplotlib is installed and with Pillow otherwise; both give images of the same size.
:func:`set_backend` forces one of them. Without either: ``pip install "cconv[viz]"``.

Functions that need gradients with respect to the input (:func:`activation_maximization`,
:func:`saliency_map`) run the model in inference mode (dropout off, BatchNorm running
statistics) and leave its parameters, gradients, layer state and random generators
exactly as they were.
"""
import math
import os
from pathlib import Path

import numpy as np

from . import _validate as V
from . import gradients
from ._draw import (Canvas, colormap, draw_sections, get_backend, line_figure, normalize, save_tiles,
                    section, set_backend, text_width)

__all__ = [
    "set_backend", "get_backend",
    "plot_history", "plot_feature_maps", "plot_filters",
    "activation_maximization", "activation_maximization_grid",
    "saliency_map", "plot_saliency", "plot_confusion_matrix",
]


# ---------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------
def plot_history(history, path, title=None, size=(1000, 400)):
    """Plot accuracy and loss per epoch, train and validation, in two panels.

    Parameters
    ----------
    history : History or dict
        ``model.fit``'s History (its ``.history`` dict is used) or a dict with the keys
        ``"loss"``, and optionally ``"accuracy"``, ``"val_loss"``, ``"val_accuracy"``,
        each a list with one value per epoch.
    path : str or os.PathLike
        Output PNG.
    title : str, optional
    size : (int, int), default (1000, 400)
        Width and height of the PNG in pixels.

    Returns
    -------
    pathlib.Path
    """
    hist = getattr(history, "history", history)
    if not isinstance(hist, dict):
        raise TypeError(f"history must be a History or a dict, got {type(history).__name__}")
    panels = []
    for metric, label in (("accuracy", "accuracy"), ("loss", "loss")):
        series = []
        for key, name in ((metric, "train"), (f"val_{metric}", "validation")):
            values = hist.get(key)
            if values is not None and len(values):
                ys = np.asarray(values, dtype=float)
                series.append((name, np.arange(1, len(ys) + 1), ys))
        if series:
            panels.append({"title": f"{label} per epoch", "xlabel": "epoch", "ylabel": label,
                           "series": series, "xinteger": True,
                           "legend": "lower right" if metric == "accuracy" else "upper right"})
    if not panels:
        raise ValueError(f"history has no 'accuracy' or 'loss' values; keys: {sorted(hist)}")
    return line_figure(panels, path, size, title)


# ---------------------------------------------------------------------------------
# Model helpers
# ---------------------------------------------------------------------------------
def _layer_index(model, layer):
    layers = list(model.layers)
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        i = int(layer)
        if not -len(layers) <= i < len(layers):
            raise ValueError(f"layer index {i} is out of range for a model with {len(layers)} layers")
        return i % len(layers)
    if isinstance(layer, str):
        for i, l in enumerate(layers):
            if l.name == layer:
                return i
        raise ValueError(f"no layer named {layer!r}; layers: {[l.name for l in layers]}")
    for i, l in enumerate(layers):
        if l is layer:
            return i
    raise ValueError(f"layer {layer!r} is not in the model")


def _is_feature_layer(layer):
    cls = type(layer).__name__
    return ("Conv" in cls or "Pool" in cls) and "Global" not in cls


def _model_dtype(model):
    return np.dtype(getattr(model, "dtype", np.float32))


def _image_batch(model, image, name="image"):
    x = np.asarray(image)
    if not model.built:
        raise ValueError("the model must be built (give input_shape or call build) first")
    if isinstance(model.input_shape, list):
        raise ValueError(f"these pictures need a model with one image input, this one has "
                         f"{len(model.input_shape)} inputs")
    shape = tuple(model.input_shape)
    if x.shape == shape:
        x = x[None]
    if x.shape != (1,) + shape:
        raise ValueError(f"{name} must have shape {shape} or {(1,) + shape}, got {np.shape(image)}")
    return np.ascontiguousarray(x, dtype=_model_dtype(model))


def _gradient_through(model, x, stop, objective, pre_activation="softmax"):
    """``(value, d value / d x)`` for ``objective`` of the output of ``model.layers[stop]``
    (inference mode; the model is left as it was). ``pre_activation``: leave out that
    layer's final activation: "softmax" (only a softmax, so scores are logits), True (any
    activation) or False (none)."""
    return gradients.gradient_of(model, x, objective, layer=model.layers[stop], pre_activation=pre_activation)


# ---------------------------------------------------------------------------------
# Feature maps and filters
# ---------------------------------------------------------------------------------
def _channel_tiles(act):
    """(H, W, C) activation -> list of C normalised (H, W) tiles."""
    return [normalize(act[:, :, c]) for c in range(act.shape[2])]


def plot_feature_maps(model, image, path_or_dir, layers=None, min_tile=64):
    """Show every channel of chosen layers' activations for one image.

    Parameters
    ----------
    model : Model (a Sequential or a functional model)
        A built model.
    image : ndarray of shape input_shape or (1, *input_shape)
        One input image, values in [0, 1].
    path_or_dir : str or os.PathLike
        A directory: one PNG per layer (``01_conv1.png``, ... in layer order) plus
        ``input.png``. A path ending in ``.png``: one figure with the input and every
        layer stacked.
    layers : list of (str or int or Layer), optional
        Layers to show; default every convolution and pooling layer (the paper's Figs. 7-12).
    min_tile : int, default 64
        Small maps are enlarged (nearest neighbour, integer factor) to at least this size.

    Each channel is scaled to [0, 1] by its own min and max (a constant channel, such as
    a dead ReLU, shows as uniform dark) and drawn with the viridis colour map, in a grid
    titled with the layer name and activation shape ``(H, W, C)``.

    Returns
    -------
    list of pathlib.Path
        The files written (input first).
    """
    x = _image_batch(model, image)
    if layers is None:
        chosen = [i for i, l in enumerate(model.layers) if _is_feature_layer(l)]
        if not chosen:
            raise ValueError("the model has no convolution or pooling layer; pass layers=")
    else:
        chosen = [_layer_index(model, l) for l in layers]
    acts = model.activations(x)
    sections = [section([x[0]], f"input {tuple(x.shape[1:])}", min_tile=max(min_tile, 192), cmap="gray")]
    names = []
    for i in chosen:
        layer = model.layers[i]
        a = acts[layer.name][0]
        if a.ndim != 3:
            raise ValueError(f"layer {layer.name!r} has output shape {a.shape}; feature maps need (H, W, C)")
        sections.append(section(_channel_tiles(a), f"{layer.name}  {tuple(a.shape)}", min_tile=min_tile))
        names.append(layer.name)
    target = Path(os.fspath(path_or_dir))
    if target.suffix.lower() == ".png":
        return [draw_sections(sections, target)]
    target.mkdir(parents=True, exist_ok=True)
    written = [draw_sections([sections[0]], target / "input.png")]
    for k, (name, sec) in enumerate(zip(names, sections[1:]), start=1):
        written.append(draw_sections([sec], target / f"{k:02d}_{name}.png"))
    return written


def plot_filters(conv_layer, path, title=None, min_tile=48):
    """Draw a convolution layer's kernels as small images.

    Parameters
    ----------
    conv_layer : Conv2D or ndarray of shape (KH, KW, C_in, C_out)
    path : str or os.PathLike
    title : str, optional
        Default: the layer name and kernel shape.
    min_tile : int, default 48
        Kernels are enlarged (nearest neighbour) to at least this size.

    With 3 input channels (a first layer on RGB images) each filter is one RGB tile;
    with 1 input channel a viridis tile; otherwise one row of tiles per output filter
    (one tile per input channel). Every filter is scaled to [0, 1] by its own min and max.

    Returns
    -------
    pathlib.Path
    """
    if isinstance(conv_layer, np.ndarray):
        w, name = conv_layer, "kernel"
    else:
        params = getattr(conv_layer, "params", None)
        if not params or "kernel" not in params:
            raise ValueError(f"plot_filters needs a built Conv2D layer or a kernel array, got {conv_layer!r}")
        w, name = params["kernel"], conv_layer.name
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"kernel must have shape (KH, KW, C_in, C_out), got {w.shape}")
    kh, kw, cin, cout = w.shape
    if title is None:
        title = f"{name} kernels {w.shape}"
    if cin == 3:
        tiles = [normalize(w[:, :, :, o]) for o in range(cout)]
        return save_tiles(tiles, path, title, min_tile=min_tile)
    if cin == 1:
        tiles = [normalize(w[:, :, 0, o]) for o in range(cout)]
        return save_tiles(tiles, path, title, min_tile=min_tile)
    tiles = []
    for o in range(cout):
        norm = normalize(w[:, :, :, o])
        tiles.extend(norm[:, :, i] for i in range(cin))
    return save_tiles(tiles, path, title, ncols=cin, min_tile=min_tile)


# ---------------------------------------------------------------------------------
# Feature visualization by optimization
# ---------------------------------------------------------------------------------
def _gaussian_blur(x, sigma):
    """Separable Gaussian blur of a (1, H, W, C) batch, edges reflected."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = x
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        mode = "reflect" if x.shape[axis] > radius else "edge"
        p = np.pad(out, pad, mode=mode)
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for j, kj in enumerate(k):
            sl = [slice(None)] * 4
            sl[axis] = slice(j, j + n)
            acc += kj * p[tuple(sl)]
        out = acc
    return out.astype(x.dtype, copy=False)


def _channels_objective(channels):
    """Objective for a batch whose sample i maximises the mean of channel channels[i]."""
    rows = np.arange(len(channels))
    cols = np.asarray(channels, dtype=np.intp)

    def objective(h):
        dy = np.zeros_like(h)
        if h.ndim == 4:
            dy[rows, :, :, cols] = 1.0 / (h.shape[1] * h.shape[2])
            value = h[rows, :, :, cols].mean(axis=(1, 2))
        else:
            dy[rows, cols] = 1.0
            value = h[rows, cols]
        return value, dy
    return objective


def _check_am_arguments(steps, lr, jitter, blur_every, blur_sigma, l2, pre_activation):
    for value, name in ((steps, "steps"), (jitter, "jitter"), (blur_every, "blur_every")):
        V.non_negative_int(value, name)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if blur_every and not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be positive, got {blur_sigma!r}")
    if not 0 <= l2 < 1:
        raise ValueError(f"l2 must be in [0, 1), got {l2!r}")
    if pre_activation not in ("auto", True, False):
        raise ValueError(f"pre_activation must be 'auto', True or False, got {pre_activation!r}")


def _roll_each(x, shifts, sign=1):
    if not shifts.any():
        return x
    out = np.empty_like(x)
    for i, (a, b) in enumerate(shifts):
        out[i] = np.roll(x[i], (sign * a, sign * b), axis=(0, 1))
    return out


def _activation_maximization_batch(model, stop, channels, steps, lr, jitter, blur_every, blur_sigma,
                                   l2, seed, init_std, pre_activation):
    """Optimise one image per channel, all in one batch (the images are independent:
    inference mode has no batch statistics). Each image has its own random stream,
    seeded by (seed, channel), so a channel's image does not depend on the others."""
    if not model.built:
        raise ValueError("the model must be built first")
    _check_am_arguments(steps, lr, jitter, blur_every, blur_sigma, l2, pre_activation)
    n_channels = model.layer_output(model.layers[stop]).shape[-1]
    for c in channels:
        V.integer(c, "channel")
        if not 0 <= c < n_channels:
            raise ValueError(f"channel {c} is out of range for layer {model.layers[stop].name!r} "
                             f"with {n_channels} channels")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    dtype = _model_dtype(model)
    shape = tuple(model.input_shape)
    rngs = [np.random.default_rng([int(seed), int(c)]) for c in channels]
    x = np.stack([np.clip(0.5 + init_std * r.standard_normal(shape), 0, 1) for r in rngs]).astype(dtype)
    spatial = x.ndim == 4
    objective = _channels_objective(channels)
    first_mode = True if pre_activation is True else "softmax"
    for step in range(steps):
        if spatial and jitter:
            shifts = np.array([r.integers(-jitter, jitter + 1, size=2) for r in rngs])
        else:
            shifts = np.zeros((len(channels), 2), dtype=np.intp)
        shifted = _roll_each(x, shifts)
        _, g = _gradient_through(model, shifted, stop, objective, pre_activation=first_mode)
        if pre_activation == "auto":
            silent = ~g.reshape(len(channels), -1).any(axis=1)
            if silent.any():
                idx = np.flatnonzero(silent)
                _, g_pre = _gradient_through(model, shifted[idx], stop,
                                             _channels_objective([channels[i] for i in idx]),
                                             pre_activation=True)
                g[idx] = g_pre
        g = _roll_each(g, shifts, sign=-1)
        std = g.reshape(len(channels), -1).std(axis=1)
        scale = np.where(std > 0, lr / np.where(std > 0, std, 1.0), 0.0)
        x = x + (scale.reshape((-1,) + (1,) * (x.ndim - 1)) * g)
        if l2:
            x = 0.5 + (x - 0.5) * (1.0 - l2)
        if spatial and blur_every and (step + 1) % blur_every == 0:
            x = _gaussian_blur(x, blur_sigma)
        x = np.clip(x, 0.0, 1.0).astype(dtype, copy=False)
    return x


def activation_maximization(model, layer, channel, steps=200, lr=0.05, jitter=2, blur_every=4,
                            blur_sigma=0.5, l2=1e-3, seed=0, init_std=0.1, pre_activation="auto"):
    """Synthesize an input that maximises one channel's mean activation.

    Starting from grey noise, gradient ascent on the input (Erhan et al. 2009) with the
    usual regularisation (Yosinski et al. 2015), each step:

    1. shift the image by a random offset of up to ``jitter`` pixels (so the pattern
       cannot rely on exact pixel positions), forward it in inference mode up to ``layer``
       and backpropagate ``d mean(activation[..., channel]) / d input`` through the
       earlier layers only;
    2. take a step of size ``lr`` along the gradient divided by its standard deviation
       (a scale-free step);
    3. decay the image towards mid-grey by the factor ``1 - l2`` (an L2 penalty), and
       every ``blur_every`` steps blur it with a Gaussian of ``blur_sigma`` pixels
       (which suppresses the high-frequency patterns that gradients alone produce);
    4. clip to the valid range [0, 1].

    The defaults suit images of about 32 pixels and more; for tiny images (8x8 digits)
    use ``jitter=1`` and ``blur_every=0``.

    Parameters
    ----------
    model : Model (a Sequential or a functional model)
        A built model taking images with values in [0, 1].
    layer : str, int or Layer
        Target layer (name, index or object).
    channel : int
        Channel (last axis) of the layer's output.
    steps : int, default 200
    lr : float, default 0.05
    jitter : int, default 2
    blur_every : int, default 4
        0 disables blurring.
    blur_sigma : float, default 0.5
    l2 : float, default 1e-3
    seed : int or None, default 0
        Seed of the starting noise and of the jitter (combined with ``channel``).
    init_std : float, default 0.1
        Standard deviation of the starting noise around 0.5.
    pre_activation : {"auto", True, False}, default "auto"
        For a layer with a fused activation (``Conv2D(..., activation="relu")``): False
        maximises the activated output; True the output before the activation; "auto"
        the activated output, except in the steps where its gradient is exactly zero (a
        ReLU channel silent everywhere, e.g. on the starting noise), which follow the
        pre-activation instead so the channel can wake up. For a softmax output layer
        the class logit is always used (a probability can be raised by lowering the
        other classes).

    Returns
    -------
    ndarray of shape input_shape, in the model's dtype, values in [0, 1]

    The model's parameters, gradients, state and random generators are not changed.
    """
    stop = _layer_index(model, layer)
    return _activation_maximization_batch(model, stop, [channel], steps, lr, jitter, blur_every,
                                          blur_sigma, l2, seed, init_std, pre_activation)[0]


def activation_maximization_grid(model, layer, channels, path, title=None, min_tile=96, steps=200,
                                 lr=0.05, jitter=2, blur_every=4, blur_sigma=0.5, l2=1e-3, seed=0,
                                 init_std=0.1, pre_activation="auto", batch_size=16):
    """Run :func:`activation_maximization` for several channels and tile the results.

    The channels are optimised together, ``batch_size`` images per forward/backward
    pass; each image is the same as :func:`activation_maximization` gives for its
    channel alone.

    Parameters
    ----------
    model, layer
        As in :func:`activation_maximization`.
    channels : int or iterable of int
        An int n means the first n channels.
    path : str or os.PathLike
        Output PNG.
    title : str, optional
    min_tile : int, default 96
    steps, lr, jitter, blur_every, blur_sigma, l2, seed, init_std, pre_activation
        As in :func:`activation_maximization`.
    batch_size : int, default 16

    Returns
    -------
    pathlib.Path
    """
    stop = _layer_index(model, layer)
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        channels = range(int(channels))
    channels = list(channels)
    if not channels:
        raise ValueError("channels is empty")
    batch_size = V.positive_int(batch_size, "batch_size")
    images = []
    for lo in range(0, len(channels), batch_size):
        images.extend(_activation_maximization_batch(
            model, stop, channels[lo:lo + batch_size], steps, lr, jitter, blur_every, blur_sigma, l2,
            seed, init_std, pre_activation))
    name = model.layers[stop].name
    if title is None:
        title = f"{name}: inputs that maximise each channel"
    return save_tiles(images, path, title, captions=[f"channel {c}" for c in channels],
                       min_tile=min_tile, cmap="gray")


# ---------------------------------------------------------------------------------
# Saliency
# ---------------------------------------------------------------------------------
def saliency_map(model, image, class_index=None):
    """Gradient of a class score with respect to the input pixels (Simonyan et al. 2014).

    Parameters
    ----------
    model : Model (a Sequential or a functional model)
    image : ndarray of shape input_shape or (1, *input_shape)
    class_index : int, optional
        Default: the class the model predicts.

    Returns
    -------
    ndarray of shape (H, W)
        ``max over channels |d score / d x|``. The score is the class logit (before a
        final softmax), computed in inference mode.
    """
    x = _image_batch(model, image)
    if class_index is None:
        class_index = int(np.argmax(model.predict(x)[0]))
    V.integer(class_index, "class_index")
    n_classes = model.output_shape[-1]
    if not 0 <= class_index < n_classes:
        raise ValueError(f"class_index {class_index} is out of range for {n_classes} classes")

    def objective(h):
        dy = np.zeros_like(h)
        dy[0, int(class_index)] = 1.0
        return float(h[0, int(class_index)]), dy

    _, g = gradients.gradient_of(model, x, objective, pre_activation="softmax")
    g = np.abs(g[0])
    return g.max(axis=-1) if g.ndim == 3 else g


def plot_saliency(model, image, path, class_index=None, class_names=None, min_tile=192):
    """Write the input, its saliency map and an overlay side by side.

    The map is shown scaled by its 99th percentile (clipped at 1); the overlay blends
    the grey input with the viridis-coloured map in proportion to the saliency.

    Parameters
    ----------
    model, image, class_index
        As in :func:`saliency_map`.
    path : str or os.PathLike
    class_names : list of str, optional
        Used in the title.
    min_tile : int, default 192

    Returns
    -------
    pathlib.Path
    """
    x = _image_batch(model, image)
    probs = model.predict(x)[0]
    predicted = int(np.argmax(probs))
    if class_index is None:
        class_index = predicted
    raw = saliency_map(model, x, class_index)
    # Raw gradients are dominated by a few pixels: scale by the 99th percentile and clip.
    top = np.percentile(raw, 99)
    sal = np.clip(raw / top, 0.0, 1.0) if top > 0 else normalize(raw)
    img = np.clip(x[0].astype(np.float64), 0, 1)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    heat = colormap(sal, "viridis").astype(np.float64) / 255
    alpha = sal[:, :, None]
    overlay = (1 - alpha) * img.mean(axis=2, keepdims=True) + alpha * heat

    def label(i):
        return class_names[i] if class_names is not None else str(i)

    title = (f"saliency for class {label(class_index)} "
             f"(predicted {label(predicted)}, p={probs[predicted]:.2f})")
    return save_tiles([img, np.repeat(sal[:, :, None], 3, axis=2), overlay], path, title,
                       captions=["input", "|d score / d input|", "overlay"], ncols=3,
                       min_tile=min_tile)


# ---------------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------------
def plot_confusion_matrix(cm, path, class_names=None, normalize=None, title=None, max_label=14):
    """Draw a confusion matrix (rows: true class, columns: predicted class) as a heat map
    with the value in every cell.

    Parameters
    ----------
    cm : ndarray of shape (K, K)
        Counts, e.g. from :func:`cconv.metrics.confusion_matrix`.
    path : str or os.PathLike
        Output PNG.
    class_names : list of str, optional
        Labels of the rows and columns (cut to ``max_label`` characters).
    normalize : {None, "true", "pred", "all"}
        Show fractions of each row, each column or the whole (scikit-learn's meaning).
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {cm.shape}")
    if not np.issubdtype(cm.dtype, np.number) or (cm.size and (not np.all(np.isfinite(cm)) or cm.min() < 0)):
        raise ValueError("cm must hold finite non-negative counts")
    k = cm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for a {k}x{k} matrix")
    names = [n if len(n) <= max_label else n[:max_label - 1] + "~" for n in names]
    values = cm.astype(np.float64)
    if normalize is not None:
        axis = {"true": 1, "pred": 0, "all": None}.get(normalize, -1)
        if axis == -1:
            raise ValueError(f"normalize must be None, 'true', 'pred' or 'all', got {normalize!r}")
        total = values.sum(axis=axis, keepdims=axis is not None)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(total > 0, values / np.where(total > 0, total, 1), 0.0)
        cells = [f"{v:.2f}" for v in values.ravel()]
    else:
        cells = [f"{int(v)}" if float(v).is_integer() else f"{v:.3g}" for v in values.ravel()]
    size = 11
    rows = [f"{n} ({i})" for i, n in enumerate(names)]
    caption = "rows: true class; columns: predicted class (by number)"
    cell = max(30, max(text_width(c, size) for c in cells) + 10)
    left = 10 + max(text_width(r, size) for r in rows) + 8
    top = 8 + (22 if title else 0) + 18 + 20
    width = max(left + k * cell + 20, text_width(caption, size) + 20,
                text_width(title or "", 16) + 20)
    scaled = values / values.max() if values.max() > 0 else values
    heat = np.repeat(np.repeat(colormap(scaled), cell, axis=0), cell, axis=1)
    canvas = Canvas(width, top + k * cell + 20)
    y = 8
    if title:
        canvas.text(title, width // 2, y, 16, "center")
        y += 22
    canvas.text(caption, width // 2, y, size, "center")
    canvas.image(heat, left, top)
    for j in range(k):
        canvas.text(str(j), left + j * cell + cell // 2, top - 16, size, "center")
    for i, r in enumerate(rows):
        canvas.text(r, left - 6, top + i * cell + cell // 2 - size // 2, size, "right")
        for j in range(k):
            light = scaled[i, j] < 0.6                     # white text on the dark cells
            canvas.text(cells[i * k + j], left + j * cell + cell // 2, top + i * cell + cell // 2 - size // 2,
                        size, "center", (255, 255, 255) if light else (0, 0, 0))
    return canvas.save(path)
