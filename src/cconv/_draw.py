"""Drawing for cconv's figures (shared by :mod:`cconv.viz`, :mod:`cconv.kernels` and
:mod:`cconv.adversarial`): tiled images and line plots written as PNG, with matplotlib (Agg)
when it is installed and Pillow otherwise; both give images of the same size.
"""
import math
import os
from pathlib import Path

import numpy as np

from ._printable import printable

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
def normalize(a):
    """Scale to [0, 1] by the array's own min and max (a constant array becomes 0)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros_like(a)
    lo, hi = a[finite].min(), a[finite].max()
    out = np.where(finite, a, lo) - lo
    return out / (hi - lo) if hi > lo else np.zeros_like(a)


def colormap(a, cmap="viridis"):
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
        return colormap(t, cmap)
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


def text_width(text, size):
    return int(math.ceil(0.62 * size * len(text)))


# ---------------------------------------------------------------------------------
# A tiny canvas: images placed at pixel positions plus text, drawn by either backend
# ---------------------------------------------------------------------------------
class Canvas:
    def __init__(self, width, height):
        self.width, self.height = int(width), int(height)
        self.images = []     # (uint8 RGB array, x, y) with (x, y) the top-left corner
        self.texts = []      # (text, x, y, size, align, color) with y the top of the text

    def image(self, rgb, x, y):
        self.images.append((np.ascontiguousarray(rgb, dtype=np.uint8), int(x), int(y)))

    def text(self, text, x, y, size=12, align="left", color=(0, 0, 0)):
        """``align``: "left", "center" or "right" (of the point ``x``)."""
        self.texts.append((printable(text), int(x), int(y), int(size), align, tuple(color)))

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
        for text, x, y, size, align, color in self.texts:
            fig.text(x / self.width, 1 - y / self.height, text, fontsize=size * 72 / _DPI,
                     ha=align, va="top", color=tuple(c / 255 for c in color))
        _literal_text(fig)
        fig.savefig(path, dpi=_DPI, facecolor="white")

    def _save_pillow(self, path):
        from PIL import Image, ImageDraw
        img = Image.new("RGB", (self.width, self.height), "white")
        for rgb, x, y in self.images:
            img.paste(Image.fromarray(rgb), (x, y))
        draw = ImageDraw.Draw(img)
        for text, x, y, size, align, color in self.texts:
            draw.text((x, y), text, fill=color, font=_pil_font(size),
                      anchor={"center": "ma", "right": "ra"}.get(align, "la"))
        img.save(path)


def _literal_text(fig):
    """Draw every text of ``fig`` as given: a ``$`` in a layer's name does not start
    matplotlib's math mode (``$\\foo$`` made savefig raise ParseFatalException)."""
    from matplotlib.text import Text
    for t in fig.findobj(Text):
        t.set_parse_math(False)


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


def section(tiles, title, captions=None, ncols=None, min_tile=64, cmap="viridis"):
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
        width = max(width, max(text_width(c, _CAPTION_SIZE) for c in captions))
    width = max(width, text_width(title, _TITLE_SIZE) if title else 0)
    height = (_TITLE_H if title else 0) + nrows * (th + cap_h) + (nrows - 1) * _GAP
    return {"tiles": rgb, "title": title, "captions": captions, "ncols": ncols,
            "tile_hw": (th, tw), "width": width, "height": height}


def draw_sections(sections, path):
    width = max(s["width"] for s in sections) + 2 * _MARGIN
    height = sum(s["height"] for s in sections) + (len(sections) - 1) * _SECTION_GAP + 2 * _MARGIN
    canvas = Canvas(width, height)
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


def save_tiles(tiles, path, title=None, captions=None, ncols=None, min_tile=64, cmap="viridis"):
    """Write a titled grid of tiles (floats in [0, 1]) as a PNG; returns the Path."""
    return draw_sections([section(tiles, title, captions, ncols, min_tile, cmap)], path)


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


def line_figure(panels, path, size, title=None):
    """Draw side-by-side line-plot panels.

    panels: list of dicts with "title", "xlabel", "ylabel", "series" (a list of
    ``(label, xs, ys)``) and optionally "ylim".
    """
    path = _prepare_path(path)
    title = printable(title) if title else title
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
        _literal_text(fig)
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
            lx = right - 10 - max(text_width(s[0], 11) for s in panel["series"]) - 28
            draw.line([(lx, ly + 6), (lx + 20, ly + 6)], fill=color, width=2)
            draw.text((lx + 25, ly), label, fill="black", font=tick_font)
    img.save(path)
