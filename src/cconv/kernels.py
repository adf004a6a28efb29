"""Classic fixed image kernels, applied with the library's own correlation.

Before a CNN learns its filters it helps to see what hand-made ones do. ``KERNELS``
maps a name to a small 2-D array; :func:`apply` correlates an image with one of them
channel by channel (:func:`cconv.functional.correlate2d`, the operation a Conv2D layer
computes), and :func:`plot_kernels` shows every result next to the original.

The kernels are written for cross-correlation, ``out[i, j] = sum image[i+m, j+n] k[m, n]``,
as CNN layers compute it: ``sobel_x`` responds positively where the intensity grows
from left to right and ``sobel_y`` where it grows from top to bottom.
"""
import numpy as np

from . import functional

__all__ = ["KERNELS", "get", "apply", "plot_kernels",
           "identity", "edge_diagonal", "edge_laplacian4", "edge_laplacian8", "sharpen",
           "box_blur", "gaussian_blur_3x3", "gaussian_blur_5x5", "sobel_x", "sobel_y"]


def identity():
    """The identity: the output equals the input."""
    return np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float64)


def edge_diagonal():
    """Edge detection along the diagonals (difference of opposite corners)."""
    return np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]], dtype=np.float64)


def edge_laplacian4():
    """Edge detection with the 4-neighbour Laplacian (centre minus its 4 neighbours)."""
    return np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float64)


def edge_laplacian8():
    """Edge detection with the 8-neighbour Laplacian (centre minus its 8 neighbours)."""
    return np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64)


def sharpen():
    """Sharpen: the identity plus the 4-neighbour Laplacian."""
    return np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float64)


def box_blur():
    """3x3 box blur: the mean of the 3x3 neighbourhood."""
    return np.full((3, 3), 1.0 / 9.0)


def gaussian_blur_3x3():
    """3x3 Gaussian blur, the binomial approximation ``[1, 2, 1]^T [1, 2, 1] / 16``."""
    b = np.array([1.0, 2.0, 1.0])
    return np.outer(b, b) / 16.0


def gaussian_blur_5x5():
    """5x5 Gaussian blur, the binomial approximation ``[1, 4, 6, 4, 1]^T [1, 4, 6, 4, 1] / 256``."""
    b = np.array([1.0, 4.0, 6.0, 4.0, 1.0])
    return np.outer(b, b) / 256.0


def sobel_x():
    """Sobel derivative along x (columns): positive where intensity grows to the right."""
    return np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def sobel_y():
    """Sobel derivative along y (rows): positive where intensity grows downwards."""
    return np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64)


_FACTORIES = {
    "identity": identity,
    "edge_diagonal": edge_diagonal,
    "edge_laplacian4": edge_laplacian4,
    "edge_laplacian8": edge_laplacian8,
    "sharpen": sharpen,
    "box_blur": box_blur,
    "gaussian_blur_3x3": gaussian_blur_3x3,
    "gaussian_blur_5x5": gaussian_blur_5x5,
    "sobel_x": sobel_x,
    "sobel_y": sobel_y,
}

#: Name -> kernel (float64 array). A fresh copy is made for each module load; use
#: :func:`get` for a copy you may modify.
KERNELS = {name: factory() for name, factory in _FACTORIES.items()}


def get(name_or_kernel):
    """Return a kernel by name (a new float64 array), or validate a given 2-D array."""
    if isinstance(name_or_kernel, str):
        try:
            return _FACTORIES[name_or_kernel]()
        except KeyError:
            raise ValueError(
                f"unknown kernel {name_or_kernel!r}; known kernels: {', '.join(_FACTORIES)}"
            ) from None
    kernel = np.asarray(name_or_kernel)
    if kernel.ndim != 2 or kernel.size == 0:
        raise ValueError(f"kernel must be a non-empty 2-D array, got shape {kernel.shape}")
    if not (np.issubdtype(kernel.dtype, np.floating) or np.issubdtype(kernel.dtype, np.integer)):
        raise TypeError(f"kernel must be a real array, got dtype {kernel.dtype}")
    return kernel.astype(np.float64)


_BOUNDARIES = {"zero": None, "reflect": "reflect", "edge": "edge"}


def apply(image, kernel, mode="same", boundary="zero"):
    """Correlate an image with a kernel, each channel separately.

    Parameters
    ----------
    image : ndarray of shape (H, W) or (H, W, C)
        Integer images are converted to float32; float64 stays float64, other floats
        become float32.
    kernel : str or ndarray of shape (KH, KW)
        A name from ``KERNELS`` or an array.
    mode : {"same", "valid", "full"}, default "same"
        As :func:`cconv.functional.correlate2d`.
    boundary : {"zero", "reflect", "edge"}, default "zero"
        How ``mode="same"`` fills the border: zeros (as a Conv2D layer with "same"
        padding), the mirror image without repeating the edge (``numpy.pad``'s
        "reflect"), or the edge pixel repeated. Only "zero" is allowed with the
        other modes.

    Returns
    -------
    ndarray of the image's number of dimensions, float32 or float64
        The (unclipped) response; edge kernels give negative values.
    """
    k = get(kernel)
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)
            or img.dtype == np.bool_):
        raise TypeError(f"image must be a real array, got dtype {img.dtype}")
    if boundary not in _BOUNDARIES:
        raise ValueError(f"boundary must be one of {sorted(_BOUNDARIES)}, got {boundary!r}")
    if mode not in ("same", "valid", "full"):
        raise ValueError(f"mode must be 'same', 'valid' or 'full', got {mode!r}")
    if boundary != "zero" and mode != "same":
        raise ValueError(f"boundary={boundary!r} needs mode='same', got mode={mode!r}")
    dtype = np.float64 if img.dtype == np.float64 else np.float32
    img = img.astype(dtype, copy=False)
    k = k.astype(dtype)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    kh, kw = k.shape
    if boundary != "zero":
        # "same" as scipy: output[i] is centred at image[i]; pad like correlate2d's
        # centring (the extra row/column of an even kernel goes at the end).
        pads = ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)
        img = np.pad(img, pads, mode=_BOUNDARIES[boundary])
        mode = "valid"
    out = np.stack(
        [functional.correlate2d(np.ascontiguousarray(img[:, :, c]), k, mode)
         for c in range(img.shape[2])],
        axis=-1,
    )
    return out[:, :, 0] if squeeze else out


def _display(name, response):
    """Map a kernel response to [0, 1] for display."""
    k = get(name)
    if abs(k.sum()) < 1e-12:
        # Zero-sum kernels (edges, derivatives): the magnitude of the response (averaged
        # over colour channels), scaled by its 99th percentile so that a few very strong
        # edges do not leave the rest black.
        mag = np.abs(response)
        if mag.ndim == 3:
            mag = mag.mean(axis=2)
        top = np.percentile(mag, 99)
        return np.clip(mag / top, 0.0, 1.0) if top > 0 else mag
    return np.clip(response, 0.0, 1.0)


def plot_kernels(image, path, kernels=None, boundary="reflect"):
    """Write a PNG showing the original image next to its response to each kernel.

    Parameters
    ----------
    image : ndarray of shape (H, W) or (H, W, C), values in [0, 1]
        C is 1 or 3.
    path : str or os.PathLike
        Output PNG.
    kernels : list of str, optional
        Names from ``KERNELS``; default: all of them.
    boundary : str, default "reflect"
        Border handling (see :func:`apply`); reflection avoids the dark frame that
        zero padding gives blurred images.

    Zero-sum kernels (edge detectors, Sobel) are shown in grey as the magnitude of their
    response scaled by its 99th percentile; the others are clipped to [0, 1].

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from . import _draw

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {np.shape(image)}")
    names = list(_FACTORIES) if kernels is None else list(kernels)
    for name in names:
        get(name)
    tiles = [np.clip(img, 0.0, 1.0)]
    captions = ["original"]
    for name in names:
        tiles.append(_display(name, apply(img, name, boundary=boundary)))
        captions.append(name)
    return _draw.save_tiles(tiles, path, title="Fixed kernels", captions=captions,
                            ncols=min(len(tiles), 4), min_tile=128, cmap="gray")
