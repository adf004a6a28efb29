"""Decoding image files, shared by :mod:`cconv.datasets` (LFW) and :mod:`cconv.data`
(folders of images).

One decoder with the hardening that hostile files need: Pillow is asked for the declared
size first and an image beyond ``PIL.Image.MAX_IMAGE_PIXELS`` is refused before its pixels
are decoded (Pillow itself only warns below twice its limit); every decoder error, whatever
its type and even without a message, becomes a ``ValueError`` naming the file; output sizes
are capped at :data:`MAX_OUTPUT_PIXELS`.
"""
import math

import numpy as np

__all__ = ["MAX_OUTPUT_PIXELS", "DATA_EXTRA", "import_pillow", "normalize_size",
           "normalize_crop", "decode"]

#: Largest output image, in pixels (height times width).
MAX_OUTPUT_PIXELS = 4096 * 4096
#: How to install what decoding needs.
DATA_EXTRA = 'pip install "cconv[data]"'


def import_pillow(who):
    """``PIL.Image``, or an ImportError naming ``who`` and the extra that installs Pillow."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"{who} needs Pillow to decode JPEG and PNG images; install it "
                          f"with: {DATA_EXTRA}") from exc
    return Image


def normalize_size(size, name="size"):
    """None, or ``(height, width)`` from an int or a pair; at most MAX_OUTPUT_PIXELS."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None, a positive int or a pair (height, width), "
                         f"got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    if h * w > MAX_OUTPUT_PIXELS:
        raise ValueError(f"{name}={size!r} asks for {h * w:,} pixels per image; at most "
                         f"{MAX_OUTPUT_PIXELS:,} (4096x4096) are allowed")
    return h, w


def normalize_crop(crop, name="crop"):
    """None, or a box ``(left, upper, right, lower)`` of floats with left < right, upper < lower."""
    if crop is None:
        return None
    try:
        box = tuple(float(v) for v in crop)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"{name} must be None or a box (left, upper, right, lower), got {crop!r}")
    left, upper, right, lower = box
    if not (0 <= left < right and 0 <= upper < lower):
        raise ValueError(f"{name} must satisfy 0 <= left < right and 0 <= upper < lower, "
                         f"got {crop!r}")
    return box


def decode(Image, source, name, size=None, crop=None, color=True, crop_frame=None):
    """Decode one image (a path or a binary file object) into a uint8 ``(H, W, C)`` array.

    Parameters
    ----------
    Image : module
        ``PIL.Image`` (from :func:`import_pillow`).
    source : str, os.PathLike or file object
    name : str
        How errors name the file.
    size : (height, width) or None
        Resize to this (Lanczos; with a crop, the box is resampled directly).
    crop : (left, upper, right, lower) or None
        Box cut out before resizing, in pixels of the image, or of a square frame of side
        ``crop_frame`` scaled to the image's size (LFW's 250x250 frame).
    color : bool
        RGB (3 channels) or luma (1 channel).

    Raises
    ------
    ValueError
        The file cannot be decoded (any decoder error, named with the file), declares more
        pixels than ``PIL.Image.MAX_IMAGE_PIXELS``, or the crop box lies outside it.
    """
    box_outside = None
    try:
        with Image.open(source) as im:
            # Pillow only warns below twice its limit: refuse at the limit, before decoding.
            if im.width * im.height > (Image.MAX_IMAGE_PIXELS or math.inf):
                raise ValueError(f"it declares {im.width}x{im.height} pixels, more than "
                                 f"PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS:,}")
            im = im.convert("RGB" if color else "L")
            box = None
            if crop is not None:
                sx = im.width / crop_frame if crop_frame else 1.0
                sy = im.height / crop_frame if crop_frame else 1.0
                left, upper, right, lower = crop
                box = (left * sx, upper * sy, right * sx, lower * sy)
                if box[2] > im.width + 1e-6 or box[3] > im.height + 1e-6:
                    box_outside = (im.width, im.height)
            if box_outside is None:
                if size is not None:
                    im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS, box=box)
                elif box is not None:
                    im = im.crop(tuple(int(round(v)) for v in box))
                arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"cannot decode image {name}: {str(exc) or type(exc).__name__}") from exc
    if box_outside is not None:
        raise ValueError(f"crop box {crop} lies outside the {box_outside[0]}x{box_outside[1]} "
                         f"image {name}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr
