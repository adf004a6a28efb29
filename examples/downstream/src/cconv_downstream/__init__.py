"""An example package built on cconv's Cython API and C API (see README.md).

``_kernels`` is Cython: it cimports cconv's kernels (``from cconv.conv cimport ...``) and
calls them without the GIL, from its own ``prange`` as well. ``_capi`` is C: it fetches
cconv's table of kernels with ``import_cconv()``. Every function writes into the arrays it
is given and returns cconv's error code (0, or one of the ``ERR_*`` constants).
"""
from ._capi import api_version
from ._capi import conv2d_forward as capi_conv2d_forward
from ._capi import max_pool2d_forward as capi_max_pool2d_forward
from ._kernels import (ERR_ARGMAX, ERR_GEOMETRY, ERR_VALUE, ERR_WORKSPACE, OK, avg_pool2d,
                       avg_pool2d_backward, col2im, conv2d, conv2d_backward, conv2d_per_image,
                       conv2d_workspace, im2col, max_pool2d, max_pool2d_backward,
                       relu_backward)

__all__ = ["OK", "ERR_ARGMAX", "ERR_GEOMETRY", "ERR_VALUE", "ERR_WORKSPACE", "api_version",
           "avg_pool2d", "avg_pool2d_backward", "capi_conv2d_forward",
           "capi_max_pool2d_forward", "col2im", "conv2d", "conv2d_backward",
           "conv2d_per_image", "conv2d_workspace", "im2col", "max_pool2d",
           "max_pool2d_backward", "relu_backward"]
