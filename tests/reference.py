"""Slow direct references for the functions of ``cconv.functional``.

Every function here is written from the mathematical definition, with Python loops over
output positions and kernel taps, so that it shares no code and no idea (im2col, GEMM,
tiling) with the compiled core. They are meant for small arrays only.

Conventions are those of ``cconv.functional``: activations NHWC ``(N, H, W, C)``,
convolution weights HWIO ``(KH, KW, C_in // groups, C_out)``. Every computation is done
in float64 and the result is cast back to the input's dtype.

A padded position is zero for the convolution, is skipped by the max pool, and counts as
a zero in the average pool's divisor (PyTorch's ``count_include_pad=True``).
"""
import math

import numpy as np


# ----------------------------------------------------------------------------- arguments

def pair(v):
    """``v`` or ``(v0, v1)`` -> a tuple of two Python ints."""
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def pads(padding, kernel_size, dilation, stride, input_hw):
    """Explicit ``((top, bottom), (left, right))`` padding for every accepted form.

    ``"same"`` pads like TensorFlow: the output has ``ceil(H / stride)`` rows and the odd
    pixel of padding goes to the bottom/right.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            out = []
            for size, k, d, s in zip(input_hw, kernel_size, dilation, stride):
                o = -(-size // s)
                total = max((o - 1) * s + (k - 1) * d + 1 - size, 0)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        raise ValueError(f"unknown padding {padding!r}")
    if isinstance(padding, (tuple, list)):
        a, b = padding
        if isinstance(a, (tuple, list)):
            return (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))
        return (int(a), int(a)), (int(b), int(b))
    p = int(padding)
    return (p, p), (p, p)


def geometry(input_hw, kernel_size, stride=1, padding=0, dilation=1):
    """Return ``(kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow)``."""
    kh, kw = pair(kernel_size)
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    (pt, pb), (pl, pr) = pads(padding, (kh, kw), (dh, dw), (sh, sw), input_hw)
    h, w = input_hw
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"output size ({oh}, {ow}) below 1")
    return (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow)


def _taps(o, k, s, d, p, size):
    """The (tap, input index) pairs of output position ``o`` that fall inside the input:
    taps t in [0, k) with 0 <= o*s - p + t*d < size (the range is computed directly, so
    that a huge window over a small input stays cheap)."""
    start = o * s - p
    first = max(0, -(start // d))                    # smallest t with start + t*d >= 0
    last = min(k - 1, (size - 1 - start) // d)       # largest t with start + t*d < size
    return [(t, start + t * d) for t in range(first, last + 1)]


# ----------------------------------------------------------------------------- convolution

def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n, i, j, g*Cog + o] = b[o'] + sum_{m, q, c} w[m, q, c, o'] * x[n, i*sh - pt + m*dh,
    j*sw - pl + q*dw, g*Cg + c]  (terms outside the input are zero)."""
    dtype = np.result_type(x, w)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, h, wd, _ = x.shape
    kh, kw, cg, cout = w.shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, _), (pl, _)), (oh, ow) = geometry(
        (h, wd), (kh, kw), stride, padding, dilation)
    cog = cout // groups
    y = np.zeros((n, oh, ow, cout))
    for g in range(groups):
        xg = x[..., g * cg:(g + 1) * cg]
        wg = w[..., g * cog:(g + 1) * cog]
        for i in range(oh):
            rows = _taps(i, kh, sh, dh, pt, h)
            for j in range(ow):
                cols = _taps(j, kw, sw, dw, pl, wd)
                acc = np.zeros((n, cog))
                for m, ih in rows:
                    for q, iw in cols:
                        acc += np.einsum("nc,co->no", xg[:, ih, iw, :], wg[m, q])
                y[:, i, j, g * cog:(g + 1) * cog] = acc
    if b is not None:
        y += np.asarray(b, dtype=np.float64)
    return y.astype(dtype)


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of ``sum(dy * conv2d(x, w, b))`` by the chain rule on the definition.

    dx[n, ih, iw, c] = sum over the outputs (i, j, o) that read x[n, ih, iw, c] of dy * w;
    dw[m, q, c, o] = sum over (n, i, j) of dy[n, i, j, o] * the input pixel tap (m, q) read;
    db[o] = sum over (n, i, j) of dy[n, i, j, o].
    """
    dtype = np.result_type(x, w)
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, h, wd, _ = x.shape
    kh, kw, cg, cout = w.shape
    (kh, kw), (sh, sw), (dh, dw_), ((pt, _), (pl, _)), (oh, ow) = geometry(
        (h, wd), (kh, kw), stride, padding, dilation)
    cog = cout // groups
    gx = np.zeros_like(x)
    gw = np.zeros_like(w)
    for g in range(groups):
        cin = slice(g * cg, (g + 1) * cg)
        co = slice(g * cog, (g + 1) * cog)
        for i in range(oh):
            rows = _taps(i, kh, sh, dh, pt, h)
            for j in range(ow):
                cols = _taps(j, kw, sw, dw_, pl, wd)
                d = dy[:, i, j, co]
                for m, ih in rows:
                    for q, iw in cols:
                        gx[:, ih, iw, cin] += np.einsum("no,co->nc", d, w[m, q, :, co])
                        gw[m, q, :, co] += np.einsum("nc,no->co", x[:, ih, iw, cin], d)
    gb = dy.sum(axis=(0, 1, 2))
    return gx.astype(dtype), gw.astype(dtype), gb.astype(dtype)


# ----------------------------------------------------------------------------- im2col

def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """cols[(n*OH + i)*OW + j, (m*KW + q)*C + c] = x_padded[n, i*sh + m*dh, j*sw + q*dw, c]."""
    x = np.asarray(x)
    n, h, wd, c = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, _), (pl, _)), (oh, ow) = geometry(
        (h, wd), kernel_size, stride, padding, dilation)
    cols = np.zeros((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            for m, ih in _taps(i, kh, sh, dh, pt, h):
                for q, iw in _taps(j, kw, sw, dw, pl, wd):
                    cols[:, i, j, m, q, :] = x[:, ih, iw, :]
    return cols.reshape(n * oh * ow, kh * kw * c)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """The adjoint of :func:`im2col`: every entry of ``cols`` is added to the pixel it came from."""
    cols = np.asarray(cols)
    n, h, wd, c = input_shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, _), (pl, _)), (oh, ow) = geometry(
        (h, wd), kernel_size, stride, padding, dilation)
    c6 = cols.astype(np.float64).reshape(n, oh, ow, kh, kw, c)
    x = np.zeros((n, h, wd, c))
    for i in range(oh):
        for j in range(ow):
            for m, ih in _taps(i, kh, sh, dh, pt, h):
                for q, iw in _taps(j, kw, sw, dw, pl, wd):
                    x[:, ih, iw, :] += c6[:, i, j, m, q, :]
    return x.astype(cols.dtype)


# ----------------------------------------------------------------------------- pooling

def _pool_geometry(x_shape, pool_size, stride, padding):
    _, h, wd, _ = x_shape
    stride = pool_size if stride is None else stride
    return geometry((h, wd), pool_size, stride, padding, 1)


def max_pool2d(x, pool_size=2, stride=None, padding=0):
    """Window maximum over the in-bounds pixels (padding never wins) and its flat index
    ``ih * W + iw``. Pixels are visited in row-major order and a later pixel replaces the
    current winner when it is strictly greater or NaN, so the first maximum wins and a NaN
    beats any number; of several NaNs the last wins (PyTorch's CPU kernel's rule)."""
    x = np.asarray(x)
    n, h, wd, c = x.shape
    (kh, kw), (sh, sw), _, ((pt, _), (pl, _)), (oh, ow) = _pool_geometry(
        x.shape, pool_size, stride, padding)
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    arg = np.empty((n, oh, ow, c), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            best = None
            for m, ih in _taps(i, kh, sh, 1, pt, h):
                for q, iw in _taps(j, kw, sw, 1, pl, wd):
                    v = x[:, ih, iw, :]
                    if best is None:
                        best = v.copy()
                        idx = np.full(v.shape, ih * wd + iw, dtype=np.int64)
                    else:
                        win = (v > best) | np.isnan(v)
                        best[win] = v[win]
                        idx[win] = ih * wd + iw
            if best is None:
                raise ValueError("a pooling window lies entirely in the padding")
            y[:, i, j, :] = best
            arg[:, i, j, :] = idx
    return y, arg


def conv2d_max_pool2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, pool_size=2,
                      pool_stride=None, pool_padding=0, relu=False):
    """max_pool2d(relu(conv2d(x, w, b, ...))) (ReLU if asked: max(z, 0), a NaN kept)."""
    z = conv2d(x, w, b, stride, padding, dilation, groups)
    if relu:
        z = np.where(z <= 0, np.zeros((), z.dtype), z)
    return max_pool2d(z, pool_size, pool_stride, pool_padding)[0]


def conv2d_max_pool2d_backward(dy, argmax, x, w, stride=1, padding=0, dilation=1, groups=1,
                               *, pool_size=2, pool_stride=None, pool_padding=0):
    """conv2d_backward of the convolution's output gradient that the max pool's backward
    pass (argmax) makes from dy, the pooled output's gradient."""
    z = conv2d(x, w, None, stride, padding, dilation, groups)
    dz = max_pool2d_backward(dy, argmax, z.shape)
    return conv2d_backward(dz, x, w, stride, padding, dilation, groups)


def max_pool2d_backward(dy, argmax, input_shape):
    """dx[n, a // W, a % W, c] += dy[n, i, j, c] with a = argmax[n, i, j, c]."""
    dy = np.asarray(dy)
    n, h, wd, c = input_shape
    dx = np.zeros((n, h * wd, c))
    for b in range(n):
        for ch in range(c):
            np.add.at(dx[b, :, ch], argmax[b, :, :, ch].ravel(),
                      dy[b, :, :, ch].astype(np.float64).ravel())
    return dx.reshape(n, h, wd, c).astype(dy.dtype)


def max_pool2d_backward_from_x(dy, x, pool_size=2, stride=None, padding=0):
    """The max-pool gradient by definition: each dy goes to the winner of its window."""
    _, arg = max_pool2d(x, pool_size, stride, padding)
    return max_pool2d_backward(dy, arg, np.shape(x))


def avg_pool2d(x, pool_size=2, stride=None, padding=0):
    """Sum of the in-bounds pixels of each window divided by KH*KW (padding counts)."""
    x = np.asarray(x)
    n, h, wd, c = x.shape
    (kh, kw), (sh, sw), _, ((pt, _), (pl, _)), (oh, ow) = _pool_geometry(
        x.shape, pool_size, stride, padding)
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            for m, ih in _taps(i, kh, sh, 1, pt, h):
                for q, iw in _taps(j, kw, sw, 1, pl, wd):
                    y[:, i, j, :] += x[:, ih, iw, :]
    return (y / (kh * kw)).astype(x.dtype)


def avg_pool2d_backward(dy, input_shape, pool_size=2, stride=None, padding=0):
    """dx[n, ih, iw, c] = sum over the windows containing (ih, iw) of dy / (KH*KW)."""
    dy = np.asarray(dy)
    n, h, wd, c = input_shape
    (kh, kw), (sh, sw), _, ((pt, _), (pl, _)), (oh, ow) = _pool_geometry(
        input_shape, pool_size, stride, padding)
    dx = np.zeros((n, h, wd, c))
    for i in range(oh):
        for j in range(ow):
            for m, ih in _taps(i, kh, sh, 1, pt, h):
                for q, iw in _taps(j, kw, sw, 1, pl, wd):
                    dx[:, ih, iw, :] += dy[:, i, j, :] / (kh * kw)
    return dx.astype(dy.dtype)


# ----------------------------------------------------------------------------- 2-D signals

def _mode_size_offset(size, k, mode):
    if mode == "valid":
        return size - k + 1
    if mode == "full":
        return size + k - 1
    if mode == "same":
        return size
    raise ValueError(f"unknown mode {mode!r}")


def correlate2d(image, kernel, mode="valid"):
    """out[i, j] = sum_{m, n} kernel[m, n] * image[i + m - a, j + n - b], zero outside the image,
    with a = 0 (valid), KH - 1 (full) or (KH - 1) // 2 (same: the kernel's centre); b likewise.
    This is scipy.signal.correlate2d's convention."""
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    (h, wd), (kh, kw) = image.shape, kernel.shape
    shift = {"valid": (0, 0), "full": (kh - 1, kw - 1),
             "same": ((kh - 1) // 2, (kw - 1) // 2)}[mode]
    oh, ow = _mode_size_offset(h, kh, mode), _mode_size_offset(wd, kw, mode)
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            s = 0.0
            for m in range(kh):
                for n in range(kw):
                    a, b = i + m - shift[0], j + n - shift[1]
                    if 0 <= a < h and 0 <= b < wd:
                        s += kernel[m, n] * image[a, b]
            out[i, j] = s
    return out


def convolve2d(image, kernel, mode="valid"):
    """out[i, j] = sum_{m, n} kernel[m, n] * image[i - m + a, j - n + b], zero outside the image,
    with a = KH - 1 (valid), 0 (full) or (KH - 1) // 2 (same); b likewise. This is
    scipy.signal.convolve2d's convention: correlation with the kernel flipped both ways."""
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    (h, wd), (kh, kw) = image.shape, kernel.shape
    shift = {"valid": (kh - 1, kw - 1), "full": (0, 0),
             "same": ((kh - 1) // 2, (kw - 1) // 2)}[mode]
    oh, ow = _mode_size_offset(h, kh, mode), _mode_size_offset(wd, kw, mode)
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            s = 0.0
            for m in range(kh):
                for n in range(kw):
                    a, b = i - m + shift[0], j - n + shift[1]
                    if 0 <= a < h and 0 <= b < wd:
                        s += kernel[m, n] * image[a, b]
            out[i, j] = s
    return out


def output_size(size, k, stride, pad_total, dilation=1):
    """floor((size + pad_total - dilation*(k-1) - 1) / stride) + 1."""
    return math.floor((size + pad_total - dilation * (k - 1) - 1) / stride) + 1


def relu_backward(dy, y):
    """dL/dx of y = max(x, 0) from its output: dy where y > 0, else 0 (a NaN y gives 0)."""
    dy = np.asarray(dy)
    return np.where(np.asarray(y) > 0, dy, 0).astype(dy.dtype)


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) by the definition: each entry a sum of products, in float64."""
    A = np.asarray(a, np.float64)
    B = np.asarray(b, np.float64)
    A, B = (A.T if trans_a else A), (B.T if trans_b else B)
    out = np.zeros((A.shape[0], B.shape[1]))
    for j in range(A.shape[1]):
        out += A[:, j:j + 1] * B[j:j + 1, :]
    return out.astype(np.result_type(np.asarray(a).dtype, np.asarray(b).dtype))


def numerical_grad(f, a, idx=None, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to entries of ``a``.

    ``a`` is perturbed in place (and restored). With ``idx`` (flat indices) returns the
    derivatives at those entries only; otherwise an array of ``a``'s shape.
    """
    flat = a.reshape(-1)
    which = range(flat.size) if idx is None else idx
    g = np.empty(len(which))
    for n, i in enumerate(which):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[n] = (fp - fm) / (2 * eps)
    return g.reshape(a.shape) if idx is None else g


# ----------------------------------------------------------------------------- transposed
# convolution, upsampling

def conv2d_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1):
    """The scatter of the definition: every input pixel (i, j) adds
    ``x[n, i, j, g*Cg + c] * w[m, q, o, g*Cg + c]`` onto output pixel
    ``(i*sh + m*dh - pt, j*sw + q*dw - pl)``, channel ``g*Cog + o``, when that pixel lies in
    the output of ``(H - 1)*sh - pt - pb + dh*(kh - 1) + oph + 1`` rows (columns alike).

    ``w`` is ``(kh, kw, C_out // groups, C_in)``; ``padding`` an int, a pair or explicit
    ``((pt, pb), (pl, pr))`` (Keras's strings are not modelled here).
    """
    if isinstance(padding, str):
        raise ValueError("the reference takes numeric padding only")
    dtype = np.result_type(x, w)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, h, wd, cin = x.shape
    kh, kw, cog, _ = w.shape
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    oph, opw = pair(0 if output_padding is None else output_padding)
    (pt, pb), (pl, pr) = pads(padding, (kh, kw), (dh, dw), (sh, sw), (h, wd))
    oh = (h - 1) * sh - pt - pb + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - pl - pr + dw * (kw - 1) + opw + 1
    cg = cin // groups
    y = np.zeros((n, oh, ow, cog * groups))
    for g in range(groups):
        ci, co = slice(g * cg, (g + 1) * cg), slice(g * cog, (g + 1) * cog)
        for i in range(h):
            for j in range(wd):
                for m in range(kh):
                    for q in range(kw):
                        r, c = i * sh + m * dh - pt, j * sw + q * dw - pl
                        if 0 <= r < oh and 0 <= c < ow:
                            y[:, r, c, co] += np.einsum("nc,oc->no", x[:, i, j, ci], w[m, q, :, ci])
    if b is not None:
        y += np.asarray(b, dtype=np.float64)
    return y.astype(dtype)


def upsample_bilinear(x, size):
    """Output pixel (i, j) samples the input at the real position
    ``(max((i + 0.5) / sh - 0.5, 0), max((j + 0.5) / sw - 0.5, 0))`` (half-pixel centres),
    interpolating linearly between the two neighbouring rows and columns (the last row and
    column repeat past the edge)."""
    dtype = x.dtype
    x = np.asarray(x, dtype=np.float64)
    n, h, wd, c = x.shape
    sh, sw = pair(size)
    y = np.zeros((n, h * sh, wd * sw, c))
    for i in range(h * sh):
        py = max((i + 0.5) / sh - 0.5, 0.0)
        r0 = min(int(math.floor(py)), h - 1)
        r1, fy = min(r0 + 1, h - 1), py - r0
        for j in range(wd * sw):
            px = max((j + 0.5) / sw - 0.5, 0.0)
            c0 = min(int(math.floor(px)), wd - 1)
            c1, fx = min(c0 + 1, wd - 1), px - c0
            y[:, i, j] = ((1 - fy) * ((1 - fx) * x[:, r0, c0] + fx * x[:, r0, c1])
                          + fy * ((1 - fx) * x[:, r1, c0] + fx * x[:, r1, c1]))
    return y.astype(dtype)


def upsample2d(x, size=2, interpolation="nearest"):
    """Nearest: every pixel repeated sh x sw times; bilinear: :func:`upsample_bilinear`."""
    if interpolation == "bilinear":
        return upsample_bilinear(x, size)
    if interpolation != "nearest":
        raise ValueError(f"unknown interpolation {interpolation!r}")
    sh, sw = pair(size)
    return np.repeat(np.repeat(x, sh, axis=1), sw, axis=2)


def _margins(m):
    if isinstance(m, (tuple, list)) and isinstance(m[0], (tuple, list)):
        return (int(m[0][0]), int(m[0][1])), (int(m[1][0]), int(m[1][1]))
    h, w = pair(m)
    return (h, h), (w, w)


def zero_pad2d(x, padding=1):
    """Zeros around height and width: ``((top, bottom), (left, right))`` rows/columns."""
    (t, b), (l, r) = _margins(padding)
    if min(t, b, l, r) < 0:
        raise ValueError("negative padding")
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))


def crop2d(x, cropping=0):
    """Rows and columns removed at the edges."""
    (t, b), (l, r) = _margins(cropping)
    n, h, w, c = x.shape
    if min(t, b, l, r) < 0 or t + b >= h or l + r >= w:
        raise ValueError("cropping out of range")
    return x[:, t:h - b, l:w - r].copy()
