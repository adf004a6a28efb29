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
import contextlib
import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "set_backend", "get_backend",
    "plot_history", "plot_feature_maps", "plot_filters",
    "activation_maximization", "activation_maximization_grid",
    "saliency_map", "plot_saliency",
]

_VIZ_EXTRA = 'pip install "cconv[viz]"'
_BACKENDS = ("matplotlib", "pillow")
_forced_backend = None
_DPI = 100

# Tableau colours (matplotlib's default cycle), for line plots.
_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]

# The viridis colour map sampled at 17 evenly spaced points (0, 1/16, ..., 1); values in
# between are interpolated linearly. Perceptually uniform and readable in grey.
_VIRIDIS = np.array([
    [68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
    [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128],
    [63, 188, 115], [94, 201, 98], [132, 212, 75], [173, 220, 48], [216, 226, 25],
    [253, 231, 37]], dtype=np.float64)


# ---------------------------------------------------------------------------------
# Backend selection
# ---------------------------------------------------------------------------------
def set_backend(name=None):
    """Force the drawing backend: ``"matplotlib"``, ``"pillow"``, or None / ``"auto"``
    (matplotlib if installed, else Pillow)."""
    global _forced_backend
    if name == "auto":
        name = None
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"backend must be 'matplotlib', 'pillow', 'auto' or None, got {name!r}")
    _forced_backend = name


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def _have_pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont  # noqa: F401
    except ImportError:
        return False
    return True


def get_backend():
    """The backend the next figure will be drawn with (``"matplotlib"`` or ``"pillow"``).

    Raises
    ------
    ImportError
        If the backend needed is not installed (``pip install "cconv[viz]"``).
    """
    if _forced_backend == "matplotlib":
        if not _have_matplotlib():
            raise ImportError(f"the matplotlib backend was requested but matplotlib is not installed: "
                              f"{_VIZ_EXTRA}")
        return "matplotlib"
    if _forced_backend == "pillow":
        if not _have_pillow():
            raise ImportError(f"the Pillow backend was requested but Pillow is not installed: {_VIZ_EXTRA}")
        return "pillow"
    if _have_matplotlib():
        return "matplotlib"
    if _have_pillow():
        return "pillow"
    raise ImportError(f"cconv.viz needs matplotlib or Pillow to write PNG files: {_VIZ_EXTRA}")


def _prepare_path(path):
    path = Path(os.fspath(path))
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------
# Colour helpers
# ---------------------------------------------------------------------------------
def _normalize(a):
    """Scale to [0, 1] by the array's own min and max (a constant array becomes 0)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros_like(a)
    lo, hi = a[finite].min(), a[finite].max()
    out = np.where(finite, a, lo) - lo
    return out / (hi - lo) if hi > lo else np.zeros_like(a)


def _colormap(a, cmap="viridis"):
    """Map values in [0, 1] of shape (H, W) to uint8 RGB (H, W, 3)."""
    a = np.clip(np.nan_to_num(np.asarray(a, dtype=np.float64)), 0.0, 1.0)
    if cmap == "gray":
        g = np.round(a * 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if cmap != "viridis":
        raise ValueError(f"cmap must be 'viridis' or 'gray', got {cmap!r}")
    pos = a * (len(_VIRIDIS) - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), len(_VIRIDIS) - 2)
    t = (pos - i0)[..., None]
    rgb = _VIRIDIS[i0] * (1 - t) + _VIRIDIS[i0 + 1] * t
    return np.round(rgb).astype(np.uint8)


def _to_rgb(tile, cmap):
    """A float tile in [0, 1] (H, W), (H, W, 1) or (H, W, 3) -> uint8 RGB."""
    t = np.asarray(tile, dtype=np.float64)
    if t.ndim == 3 and t.shape[2] == 1:
        t = t[:, :, 0]
    if t.ndim == 2:
        return _colormap(t, cmap)
    if t.ndim == 3 and t.shape[2] == 3:
        return np.round(np.clip(np.nan_to_num(t), 0.0, 1.0) * 255).astype(np.uint8)
    raise ValueError(f"a tile must have shape (H, W), (H, W, 1) or (H, W, 3), got {t.shape}")


def _upscale(rgb, factor):
    if factor == 1:
        return rgb
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _grid_cols(n):
    """Columns for n tiles: a divisor of n between sqrt(n) and 2 sqrt(n) if there is one."""
    root = math.sqrt(n)
    for c in range(math.ceil(root), int(2 * root) + 1):
        if n % c == 0:
            return c
    return max(1, math.ceil(root))


def _text_width(text, size):
    return int(math.ceil(0.62 * size * len(text)))


# ---------------------------------------------------------------------------------
# A tiny canvas: images placed at pixel positions plus text, drawn by either backend
# ---------------------------------------------------------------------------------
class _Canvas:
    def __init__(self, width, height):
        self.width, self.height = int(width), int(height)
        self.images = []     # (uint8 RGB array, x, y) with (x, y) the top-left corner
        self.texts = []      # (text, x, y, size, align) with y the top of the text

    def image(self, rgb, x, y):
        self.images.append((np.ascontiguousarray(rgb, dtype=np.uint8), int(x), int(y)))

    def text(self, text, x, y, size=12, align="left"):
        self.texts.append((str(text), int(x), int(y), int(size), align))

    def save(self, path):
        path = _prepare_path(path)
        if get_backend() == "matplotlib":
            self._save_matplotlib(path)
        else:
            self._save_pillow(path)
        return path

    def _save_matplotlib(self, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(self.width / _DPI, self.height / _DPI), dpi=_DPI, facecolor="white")
        FigureCanvasAgg(fig)
        for rgb, x, y in self.images:
            fig.figimage(rgb, xo=x, yo=self.height - y - rgb.shape[0], origin="upper")
        for text, x, y, size, align in self.texts:
            fig.text(x / self.width, 1 - y / self.height, text, fontsize=size * 72 / _DPI,
                     ha=align, va="top", color="black")
        fig.savefig(path, dpi=_DPI, facecolor="white")

    def _save_pillow(self, path):
        from PIL import Image, ImageDraw
        img = Image.new("RGB", (self.width, self.height), "white")
        for rgb, x, y in self.images:
            img.paste(Image.fromarray(rgb), (x, y))
        draw = ImageDraw.Draw(img)
        for text, x, y, size, align in self.texts:
            draw.text((x, y), text, fill="black", font=_pil_font(size),
                      anchor="ma" if align == "center" else "la")
        img.save(path)


def _pil_font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)     # Pillow >= 10.1 with FreeType
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default()


_MARGIN = 10
_TITLE_SIZE = 16
_TITLE_H = 28
_CAPTION_SIZE = 11
_CAPTION_H = 15
_GAP = 4
_SECTION_GAP = 18


def _section(tiles, title, captions=None, ncols=None, min_tile=64, cmap="viridis"):
    """A titled grid of float tiles (all the same shape), converted to uint8 RGB."""
    if not tiles:
        raise ValueError("nothing to draw: no tiles")
    rgb = [_to_rgb(t, cmap) for t in tiles]
    if len({r.shape for r in rgb}) != 1:
        raise ValueError(f"tiles must all have the same shape, got {sorted({r.shape for r in rgb})}")
    h, w = rgb[0].shape[:2]
    factor = max(1, math.ceil(min_tile / max(h, w)))
    rgb = [_upscale(r, factor) for r in rgb]
    ncols = _grid_cols(len(rgb)) if ncols is None else max(1, min(int(ncols), len(rgb)))
    nrows = math.ceil(len(rgb) / ncols)
    th, tw = rgb[0].shape[:2]
    cap_h = _CAPTION_H if captions else 0
    width = ncols * tw + (ncols - 1) * _GAP
    if captions:
        width = max(width, max(_text_width(c, _CAPTION_SIZE) for c in captions))
    width = max(width, _text_width(title, _TITLE_SIZE) if title else 0)
    height = (_TITLE_H if title else 0) + nrows * (th + cap_h) + (nrows - 1) * _GAP
    return {"tiles": rgb, "title": title, "captions": captions, "ncols": ncols,
            "tile_hw": (th, tw), "width": width, "height": height}


def _draw_sections(sections, path):
    width = max(s["width"] for s in sections) + 2 * _MARGIN
    height = sum(s["height"] for s in sections) + (len(sections) - 1) * _SECTION_GAP + 2 * _MARGIN
    canvas = _Canvas(width, height)
    y = _MARGIN
    for s in sections:
        if s["title"]:
            canvas.text(s["title"], width // 2, y + 4, _TITLE_SIZE, "center")
            y += _TITLE_H
        th, tw = s["tile_hw"]
        ncols = s["ncols"]
        grid_w = ncols * tw + (ncols - 1) * _GAP
        x0 = (width - grid_w) // 2
        cap_h = _CAPTION_H if s["captions"] else 0
        for k, rgb in enumerate(s["tiles"]):
            r, c = divmod(k, ncols)
            tx = x0 + c * (tw + _GAP)
            ty = y + r * (th + cap_h + _GAP)
            canvas.image(rgb, tx, ty)
            if s["captions"]:
                canvas.text(s["captions"][k], tx + tw // 2, ty + th + 1, _CAPTION_SIZE, "center")
        nrows = math.ceil(len(s["tiles"]) / ncols)
        y += nrows * (th + cap_h) + (nrows - 1) * _GAP + _SECTION_GAP
    return canvas.save(path)


def _save_tiles(tiles, path, title=None, captions=None, ncols=None, min_tile=64, cmap="viridis"):
    """Write a titled grid of tiles (floats in [0, 1]) as a PNG; returns the Path."""
    return _draw_sections([_section(tiles, title, captions, ncols, min_tile, cmap)], path)


# ---------------------------------------------------------------------------------
# Line plots (training curves, accuracy against epsilon)
# ---------------------------------------------------------------------------------
def _nice_ticks(lo, hi, n=5, integer=False):
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo], 0
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if step >= raw and not (integer and m == 2.5 and mag < 10):
            break
    if integer:
        step = max(1.0, step)
        decimals = 0
    else:
        decimals = max(0, -int(math.floor(math.log10(step) + 1e-9))) + (1 if m == 2.5 else 0)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks, decimals


def _series_range(panel):
    xs = np.concatenate([np.asarray(s[1], dtype=float) for s in panel["series"]])
    ys = np.concatenate([np.asarray(s[2], dtype=float) for s in panel["series"]])
    xs, ys = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
    x0, x1 = (xs.min(), xs.max()) if xs.size else (0.0, 1.0)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if panel.get("ylim") is not None:
        y0, y1 = panel["ylim"]
    else:
        y0, y1 = (ys.min(), ys.max()) if ys.size else (0.0, 1.0)
        pad = 0.05 * (y1 - y0) if y1 > y0 else 0.5
        y0, y1 = y0 - pad, y1 + pad
    return x0, x1, y0, y1


def _line_figure(panels, path, size, title=None):
    """Draw side-by-side line-plot panels.

    panels: list of dicts with "title", "xlabel", "ylabel", "series" (a list of
    ``(label, xs, ys)``) and optionally "ylim".
    """
    path = _prepare_path(path)
    if get_backend() == "matplotlib":
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, facecolor="white")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, panel in zip(axes, panels):
            for i, (label, xs, ys) in enumerate(panel["series"]):
                color = tuple(c / 255 for c in _COLORS[i % len(_COLORS)])
                ax.plot(xs, ys, color=color, label=label, linewidth=1.8,
                        marker="o" if len(xs) <= 25 else None, markersize=4)
            ax.set_title(panel.get("title", ""))
            ax.set_xlabel(panel.get("xlabel", ""))
            ax.set_ylabel(panel.get("ylabel", ""))
            x0, x1, y0, y1 = _series_range(panel)
            ax.set_ylim(y0, y1)
            ax.grid(True, alpha=0.3)
            if panel.get("xinteger"):
                from matplotlib.ticker import MaxNLocator
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(loc=panel.get("legend", "best"))
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI, facecolor="white")
        return path
    _line_figure_pillow(panels, path, size, title)
    return path


def _line_figure_pillow(panels, path, size, title):
    from PIL import Image, ImageDraw
    width, height = int(size[0]), int(size[1])
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    top_band = 30 if title else 0
    if title:
        draw.text((width // 2, 8), title, fill="black", font=_pil_font(16), anchor="ma")
    pw = width // len(panels)
    tick_font, label_font = _pil_font(11), _pil_font(13)
    for p, panel in enumerate(panels):
        left, right = p * pw + 70, (p + 1) * pw - 15
        top, bottom = top_band + 32, height - 48
        x0, x1, y0, y1 = _series_range(panel)

        def tx(v):
            return left + (v - x0) / (x1 - x0) * (right - left)

        def ty(v):
            return bottom - (v - y0) / (y1 - y0) * (bottom - top)

        draw.text(((left + right) // 2, top_band + 8), panel.get("title", ""), fill="black",
                  font=label_font, anchor="ma")
        yt, yd = _nice_ticks(y0, y1)
        for t in yt:
            draw.line([(left, ty(t)), (right, ty(t))], fill=(225, 225, 225))
            draw.text((left - 5, ty(t)), f"{t:.{yd}f}", fill="black", font=tick_font, anchor="rm")
        xt, xd = _nice_ticks(x0, x1, n=6, integer=bool(panel.get("xinteger")))
        for t in xt:
            draw.line([(tx(t), top), (tx(t), bottom)], fill=(225, 225, 225))
            draw.text((tx(t), bottom + 5), f"{t:.{xd}f}", fill="black", font=tick_font, anchor="ma")
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text(((left + right) // 2, bottom + 22), panel.get("xlabel", ""), fill="black",
                  font=label_font, anchor="ma")
        ylabel = panel.get("ylabel", "")
        if ylabel:
            box = draw.textbbox((0, 0), ylabel, font=label_font)
            tmp = Image.new("RGB", (box[2] + 2, box[3] + 2), "white")
            ImageDraw.Draw(tmp).text((1, 1), ylabel, fill="black", font=label_font)
            tmp = tmp.rotate(90, expand=True)
            img.paste(tmp, (p * pw + 6, int((top + bottom) / 2 - tmp.height / 2)))
        for i, (label, xs, ys) in enumerate(panel["series"]):
            color = _COLORS[i % len(_COLORS)]
            pts = [(tx(a), ty(b)) if np.isfinite(a) and np.isfinite(b) else None
                   for a, b in zip(np.asarray(xs, float), np.asarray(ys, float))]
            for a, b in zip(pts[:-1], pts[1:]):
                if a is not None and b is not None:
                    draw.line([a, b], fill=color, width=2)
            if len(pts) <= 25:
                for q in pts:
                    if q is not None:
                        draw.ellipse([q[0] - 3, q[1] - 3, q[0] + 3, q[1] + 3], fill=color)
            # legend, top or bottom right inside the axes
            if panel.get("legend") == "lower right":
                ly = bottom - 8 - 16 * (len(panel["series"]) - i)
            else:
                ly = top + 8 + 16 * i
            lx = right - 10 - max(_text_width(s[0], 11) for s in panel["series"]) - 28
            draw.line([(lx, ly + 6), (lx + 20, ly + 6)], fill=color, width=2)
            draw.text((lx + 25, ly), label, fill="black", font=tick_font)
    img.save(path)


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
    return _line_figure(panels, path, size, title)


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
    shape = tuple(model.input_shape)
    if x.shape == shape:
        x = x[None]
    if x.shape != (1,) + shape:
        raise ValueError(f"{name} must have shape {shape} or {(1,) + shape}, got {np.shape(image)}")
    return np.ascontiguousarray(x, dtype=_model_dtype(model))


@contextlib.contextmanager
def _preserved(model):
    keeper = getattr(model, "_preserved_state", None)
    if keeper is None:
        yield
    else:
        with keeper():
            yield


def _skip_activation(layer, pre_activation):
    act = getattr(layer, "activation", None)
    if act is None or not pre_activation:
        return False
    return pre_activation is True or type(act).__name__ == "Softmax"


def _gradient_through(model, x, stop, objective, pre_activation="softmax"):
    """Forward ``x`` through layers[0..stop] (inference mode, caching), then backpropagate
    the gradient that ``objective(output) -> (value, d value / d output)`` returns.

    ``pre_activation``: skip the activation fused into layer ``stop``: "softmax" (only a
    softmax, so scores are logits), True (any activation) or False (none).
    Returns (value, d value / d x). The model is left as it was.
    """
    layers = model.layers[:stop + 1]
    with _preserved(model):
        for layer in model.layers:
            layer.need_input_grad = True
        h = x
        for i, layer in enumerate(layers):
            if i == stop and _skip_activation(layer, pre_activation):
                h = layer.forward(h, training=False, cache=True, apply_activation=False)
            else:
                h = layer.forward(h, training=False, cache=True)
        value, dy = objective(h)
        dy = np.ascontiguousarray(dy, dtype=h.dtype)
        for layer in reversed(layers):
            dy = layer.backward(dy)
    return value, dy


def _score_layer(model):
    """Index of the layer whose output holds the class scores (logits)."""
    last = len(model.layers) - 1
    if type(model.layers[last]).__name__ == "Softmax" and last > 0:
        return last - 1
    return last


# ---------------------------------------------------------------------------------
# Feature maps and filters
# ---------------------------------------------------------------------------------
def _channel_tiles(act):
    """(H, W, C) activation -> list of C normalised (H, W) tiles."""
    return [_normalize(act[:, :, c]) for c in range(act.shape[2])]


def plot_feature_maps(model, image, path_or_dir, layers=None, min_tile=64):
    """Show every channel of chosen layers' activations for one image.

    Parameters
    ----------
    model : Sequential
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
    sections = [_section([x[0]], f"input {tuple(x.shape[1:])}", min_tile=max(min_tile, 192), cmap="gray")]
    names = []
    for i in chosen:
        layer = model.layers[i]
        a = acts[layer.name][0]
        if a.ndim != 3:
            raise ValueError(f"layer {layer.name!r} has output shape {a.shape}; feature maps need (H, W, C)")
        sections.append(_section(_channel_tiles(a), f"{layer.name}  {tuple(a.shape)}", min_tile=min_tile))
        names.append(layer.name)
    target = Path(os.fspath(path_or_dir))
    if target.suffix.lower() == ".png":
        return [_draw_sections(sections, target)]
    target.mkdir(parents=True, exist_ok=True)
    written = [_draw_sections([sections[0]], target / "input.png")]
    for k, (name, sec) in enumerate(zip(names, sections[1:]), start=1):
        written.append(_draw_sections([sec], target / f"{k:02d}_{name}.png"))
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
        tiles = [_normalize(w[:, :, :, o]) for o in range(cout)]
        return _save_tiles(tiles, path, title, min_tile=min_tile)
    if cin == 1:
        tiles = [_normalize(w[:, :, 0, o]) for o in range(cout)]
        return _save_tiles(tiles, path, title, min_tile=min_tile)
    tiles = []
    for o in range(cout):
        norm = _normalize(w[:, :, :, o])
        tiles.extend(norm[:, :, i] for i in range(cin))
    return _save_tiles(tiles, path, title, ncols=cin, min_tile=min_tile)


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
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
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
    n_channels = model.layers[stop].output_shape(_input_shape_of(model, stop))[-1]
    for c in channels:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ValueError(f"channel must be an int, got {c!r}")
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


def _input_shape_of(model, index):
    shapes = getattr(model, "_shapes", None)
    if index == 0 or not shapes:
        shape = tuple(model.input_shape)
        for layer in model.layers[:index]:
            shape = tuple(layer.output_shape(shape))
        return shape
    return tuple(shapes[index - 1])


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
    model : Sequential
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    images = []
    for lo in range(0, len(channels), batch_size):
        images.extend(_activation_maximization_batch(
            model, stop, channels[lo:lo + batch_size], steps, lr, jitter, blur_every, blur_sigma, l2,
            seed, init_std, pre_activation))
    name = model.layers[stop].name
    if title is None:
        title = f"{name}: inputs that maximise each channel"
    return _save_tiles(images, path, title, captions=[f"channel {c}" for c in channels],
                       min_tile=min_tile, cmap="gray")


# ---------------------------------------------------------------------------------
# Saliency
# ---------------------------------------------------------------------------------
def saliency_map(model, image, class_index=None):
    """Gradient of a class score with respect to the input pixels (Simonyan et al. 2014).

    Parameters
    ----------
    model : Sequential
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
    stop = _score_layer(model)
    if class_index is None:
        class_index = int(np.argmax(model.predict(x)[0]))
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)):
        raise ValueError(f"class_index must be an int, got {class_index!r}")
    n_classes = model.output_shape[-1]
    if not 0 <= class_index < n_classes:
        raise ValueError(f"class_index {class_index} is out of range for {n_classes} classes")

    def objective(h):
        dy = np.zeros_like(h)
        dy[0, int(class_index)] = 1.0
        return float(h[0, int(class_index)]), dy

    _, g = _gradient_through(model, x, stop, objective)
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
    sal = np.clip(raw / top, 0.0, 1.0) if top > 0 else _normalize(raw)
    img = np.clip(x[0].astype(np.float64), 0, 1)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    heat = _colormap(sal, "viridis").astype(np.float64) / 255
    alpha = sal[:, :, None]
    overlay = (1 - alpha) * img.mean(axis=2, keepdims=True) + alpha * heat

    def label(i):
        return class_names[i] if class_names is not None else str(i)

    title = (f"saliency for class {label(class_index)} "
             f"(predicted {label(predicted)}, p={probs[predicted]:.2f})")
    return _save_tiles([img, np.repeat(sal[:, :, None], 3, axis=2), overlay], path, title,
                       captions=["input", "|d score / d input|", "overlay"], ncols=3,
                       min_tile=min_tile)
