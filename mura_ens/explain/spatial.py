"""Spatial layers of the NumPy backward pass (heatmaps from an inner feature map): convolution, 2-D max/average
pooling, zero padding, concatenation and addition, channels-last, as TensorFlow computes them at inference.

Each function returns the layer's output and the function mapping the output's gradient to the input's
(to each input's, for :func:`concatenate` and :func:`add`). ``padding`` is Keras' ``"same"`` or ``"valid"``:
``"same"`` pads ``max((out - 1) * stride + size - n, 0)`` cells, the smaller half before (TensorFlow's rule).
Max pooling's gradient goes to the first maximum of each window in row-major order (TensorFlow's
``MaxPoolGrad``); average pooling with ``"same"`` padding divides by the number of cells inside the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Backward = Callable[[np.ndarray], np.ndarray]


def same_padding(n: int, size: int, stride: int) -> tuple[int, int, int]:
    """(output side, cells padded before, after) of ``"same"`` padding along one axis of ``n`` cells."""
    out = -(-n // stride)
    total = max((out - 1) * stride + size - n, 0)
    return out, total // 2, total - total // 2


def _pads(shape: tuple[int, ...], size: Sequence[int], strides: Sequence[int], padding: str):
    """((top, bottom), (left, right)) and the output (h, w) of a window ``size`` at ``strides``."""
    if padding == "same":
        out_h, top, bottom = same_padding(shape[1], size[0], strides[0])
        out_w, left, right = same_padding(shape[2], size[1], strides[1])
        return ((top, bottom), (left, right)), (out_h, out_w)
    if padding != "valid":
        raise ValueError(f"padding {padding!r} is not supported")
    out_h = (shape[1] - size[0]) // strides[0] + 1
    out_w = (shape[2] - size[1]) // strides[1] + 1
    return ((0, 0), (0, 0)), (out_h, out_w)


def _windows(padded: np.ndarray, size: Sequence[int], strides: Sequence[int], out: tuple[int, int]) -> np.ndarray:
    """(N, out_h, out_w, C, size_h, size_w) view of the windows of ``padded`` (N, H, W, C)."""
    view = np.lib.stride_tricks.sliding_window_view(padded, tuple(size), axis=(1, 2))
    return view[:, : (out[0] - 1) * strides[0] + 1 : strides[0], : (out[1] - 1) * strides[1] + 1 : strides[1]]


def _scatter(grads: np.ndarray, padded_shape, strides: Sequence[int], pads) -> np.ndarray:
    """Add window gradients (N, out_h, out_w, C, size_h, size_w) back onto the padded input; crop the padding."""
    total = np.zeros(padded_shape, dtype=np.float64)
    out_h, out_w = grads.shape[1], grads.shape[2]
    for i in range(grads.shape[4]):
        for j in range(grads.shape[5]):
            rows = slice(i, i + (out_h - 1) * strides[0] + 1, strides[0])
            cols = slice(j, j + (out_w - 1) * strides[1] + 1, strides[1])
            total[:, rows, cols, :] += grads[..., i, j]
    (top, bottom), (left, right) = pads
    return total[:, top : total.shape[1] - bottom, left : total.shape[2] - right, :]


def conv2d(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, *, strides: Sequence[int], padding: str
) -> tuple[np.ndarray, Backward]:
    """``Conv2D`` (kernel (kh, kw, C_in, C_out), no dilation, one group) before its activation."""
    size = kernel.shape[:2]
    pads, out = _pads(x.shape, size, strides, padding)
    padded = np.pad(x, ((0, 0), *pads, (0, 0)))
    windows = _windows(padded, size, strides, out)  # (N, oh, ow, C_in, kh, kw)
    value = np.einsum("nhwcij,ijcd->nhwd", windows, kernel, optimize=True) + bias

    def backward(g: np.ndarray) -> np.ndarray:
        grads = np.einsum("nhwd,ijcd->nhwcij", g, kernel, optimize=True)
        return _scatter(grads, padded.shape, strides, pads)

    return value, backward


def pooling(
    x: np.ndarray, *, kind: str, pool_size: Sequence[int], strides: Sequence[int], padding: str
) -> tuple[np.ndarray, Backward]:
    """``MaxPooling2D`` (``kind`` ``"max"``) or ``AveragePooling2D`` (``"average"``)."""
    pads, out = _pads(x.shape, pool_size, strides, padding)
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    windows = _windows(padded, pool_size, strides, out)
    n, oh, ow, c, kh, kw = windows.shape
    if kind == "max":
        flat = windows.reshape(n, oh, ow, c, kh * kw)
        first = flat.argmax(axis=-1)  # the first maximum, row-major in the window
        value = np.take_along_axis(flat, first[..., None], axis=-1)[..., 0]
        pick = np.eye(kh * kw, dtype=np.float64)[first].reshape(n, oh, ow, c, kh, kw)
        return value, lambda g: _scatter(pick * g[..., None, None], padded.shape, strides, pads)
    inside = np.pad(np.ones((1, *x.shape[1:3], 1)), ((0, 0), *pads, (0, 0)))
    counts = _windows(inside, pool_size, strides, out).sum(axis=(-2, -1))  # (1, oh, ow, 1)
    value = windows.sum(axis=(-2, -1)) / counts
    mask = _windows(inside, pool_size, strides, out)  # (1, oh, ow, 1, kh, kw): 1 inside the image

    def backward(g: np.ndarray) -> np.ndarray:
        share = (g / counts)[..., None, None] * mask
        return _scatter(np.broadcast_to(share, windows.shape), padded.shape, strides, pads)

    return value, backward


def zero_padding(x: np.ndarray, pads: Sequence[Sequence[int]]) -> tuple[np.ndarray, Backward]:
    """``ZeroPadding2D`` with ((top, bottom), (left, right))."""
    (top, bottom), (left, right) = pads
    value = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    h, w = x.shape[1], x.shape[2]
    return value, lambda g: g[:, top : top + h, left : left + w, :]


def concatenate(inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, Callable[[np.ndarray], list[np.ndarray]]]:
    """``Concatenate`` on the channel (last) axis; the backward function splits the gradient per input."""
    cuts = np.cumsum([a.shape[-1] for a in inputs])[:-1]
    return np.concatenate(inputs, axis=-1), lambda g: list(np.split(g, cuts, axis=-1))


def add(inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, Callable[[np.ndarray], list[np.ndarray]]]:
    """``Add``: the sum; each input gets the whole gradient."""
    return sum(inputs[1:], inputs[0]), lambda g: [g] * len(inputs)
