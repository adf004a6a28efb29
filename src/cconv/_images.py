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

__all__ = ["MAX_OUTPUT_PIXELS", "DATA_EXTRA", "RESAMPLING", "import_pillow", "normalize_size",
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


#: Resampling filters by name (Pillow's).
RESAMPLING = ("nearest", "bilinear", "bicubic", "lanczos", "area")


def decode(Image, source, name, size=None, crop=None, mode="RGB", crop_frame=None,
           resample="lanczos", draft=False):
    """Decode one image (a path or a binary file object) into a uint8 ``(H, W, C)`` array.

    Parameters
    ----------
    Image : module
        ``PIL.Image`` (from :func:`import_pillow`).
    source : str, os.PathLike or file object
    name : str
        How errors name the file.
    size : (height, width) or None
        Resize to this with the ``resample`` filter (with a crop, the box is resampled
        directly).
    crop : (left, upper, right, lower) or None
        Box cut out before resizing, in pixels of the image, or of a square frame of side
        ``crop_frame`` scaled to the image's size (LFW's 250x250 frame).
    mode : {"RGB", "L", "RGBA"}
        RGB (3 channels), luma (1 channel, ITU-R 601-2) or RGBA (4 channels).
    resample : str
        One of :data:`RESAMPLING` ("area" is Pillow's box filter); every filter but
        "nearest" low-pass filters when shrinking.
    draft : bool
        Let the JPEG decoder shrink the image by 2, 4 or 8 while decoding (libjpeg's DCT
        scaling, Pillow's ``draft``) as far as the output (and the crop box in it) stays at
        least ``size``: 2-4x faster for a large reduction, slightly different pixels.

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
            width, height = im.width, im.height
            if draft and size is not None and im.format == "JPEG":
                cw, ch = (crop[2] - crop[0], crop[3] - crop[1]) if crop is not None else (0, 0)
                if crop is not None and crop_frame:
                    cw, ch = cw * width / crop_frame, ch * height / crop_frame
                fx = width / cw if cw else 1.0
                fy = height / ch if ch else 1.0
                im.draft(mode if mode != "RGBA" else "RGB",
                         (math.ceil(size[1] * fx), math.ceil(size[0] * fy)))
            im = im.convert(mode)
            box = None
            if crop is not None:
                sx = im.width / (crop_frame or width)
                sy = im.height / (crop_frame or height)
                left, upper, right, lower = crop
                box = (left * sx, upper * sy, right * sx, lower * sy)
                if box[2] > im.width + 1e-6 or box[3] > im.height + 1e-6:
                    box_outside = (width, height)
            if box_outside is None:
                if size is not None:
                    im = im.resize((size[1], size[0]), _filter(Image, resample), box=box)
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


def _filter(Image, resample):
    R = Image.Resampling
    return {"nearest": R.NEAREST, "bilinear": R.BILINEAR, "bicubic": R.BICUBIC,
            "lanczos": R.LANCZOS, "area": R.BOX}[resample]
