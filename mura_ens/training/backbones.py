"""Building blocks for plugins that wrap a ``keras.applications`` backbone.

Used by the built-in ``densenet201`` and ``resnet50`` plugins and open to
third-party ones (import inside ``build``): ImageNet normalisation as plain
layers that tf2onnx converts, a head spec parser and
:func:`backbone_classifier`, which puts preprocessing, backbone, pooling, an
optional MLP head and a sigmoid unit together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: ``keras.applications.imagenet_utils.preprocess_input`` constants (RGB order).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NORMALIZATION_MODES = ("torch", "caffe", "tf")


def parse_head(spec: str | int | None) -> list[int]:
    """``"512-512"`` -> ``[512, 512]``; ``""``/``None``/``0`` -> ``[]`` (no hidden layer)."""
    if spec is None or str(spec).strip() in ("", "0", "none"):
        return []
    try:
        units = [int(part) for part in str(spec).replace(",", "-").split("-") if part.strip()]
    except ValueError:
        raise ValueError(f"head must look like '512-512' (units per dense layer), got {spec!r}") from None
    if any(u < 1 for u in units):
        raise ValueError(f"head units must be >= 1, got {spec!r}")
    return units


def imagenet_normalization(mode: str, *, name: str = "imagenet_norm"):
    """A layer doing what ``keras.applications.*.preprocess_input`` does, on 0-255 RGB input.

    ``torch`` (DenseNet): ``(x/255 - mean) / std`` per channel, folded into
    one per-channel ``Rescaling`` (scale and offset). ``caffe`` (ResNet50):
    RGB->BGR and mean subtraction, as a frozen 1x1 ``Conv2D`` whose kernel is
    the channel permutation and whose bias is ``-mean`` (products by 0 and 1
    are exact, so it equals the reference bit for bit up to the add).
    ``tf``: ``x/127.5 - 1``. All convert to plain ONNX Mul/Add/Conv.
    """
    import numpy as np
    from keras import layers

    if mode == "torch":
        std = np.asarray(IMAGENET_STD_RGB, dtype=np.float64)
        mean = np.asarray(IMAGENET_MEAN_RGB, dtype=np.float64)
        scale = (1.0 / (255.0 * std)).tolist()
        offset = (-mean / std).tolist()
        return layers.Rescaling(scale=scale, offset=offset, name=name)
    if mode == "caffe":
        permutation = np.zeros((1, 1, 3, 3), dtype=np.float32)
        for out_channel, in_channel in enumerate((2, 1, 0)):
            permutation[0, 0, in_channel, out_channel] = 1.0
        bias = -np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
        layer = layers.Conv2D(
            3,
            1,
            name=name,
            trainable=False,
            kernel_initializer=_constant(permutation),
            bias_initializer=_constant(bias),
        )
        return layer
    if mode == "tf":
        return layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name=name)
    raise ValueError(f"unknown ImageNet normalisation mode {mode!r}; expected one of {', '.join(NORMALIZATION_MODES)}")


def _constant(value):
    import keras

    return keras.initializers.Constant(value)


def backbone_classifier(
    backbone_fn: Callable[..., Any],
    config: Mapping[str, Any],
    *,
    normalization: str,
    name: str,
):
    """input -> ImageNet normalisation -> backbone -> pooling -> [Dense-ReLU-Dropout]* -> Dropout -> sigmoid.

    ``backbone_fn`` is a ``keras.applications`` constructor (e.g.
    ``keras.applications.DenseNet201``). ``config`` needs ``image_size``,
    ``weights`` (None, ``"imagenet"`` or a local file of backbone weights
    without top, as ``keras.applications`` accepts), ``pooling``
    (``avg``/``max``), ``head``, ``dropout`` and ``trainable_after``: the
    backbone layers before that index are frozen (0 = all trainable; the
    seed's best for DenseNet201 was 606). Frozen BatchNormalization layers
    run in inference mode (Keras 3 semantics).
    """
    import keras
    from keras import layers

    size = int(config["image_size"])
    weights = config.get("weights")
    weights = None if weights in (None, "none") else weights
    trainable_after = int(config["trainable_after"])
    if trainable_after < 0:
        raise ValueError(f"trainable_after must be >= 0, got {trainable_after}")
    head = parse_head(config.get("head", ""))
    dropout = float(config.get("dropout", 0.0))

    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = imagenet_normalization(normalization)(inputs)
    backbone = backbone_fn(include_top=False, weights=weights, input_shape=(size, size, 3))
    for layer in backbone.layers[:trainable_after]:
        layer.trainable = False
    x = backbone(x)
    if config.get("pooling", "avg") == "max":
        x = layers.GlobalMaxPooling2D(name="pool")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    for index, units in enumerate(head, start=1):
        x = layers.Dense(units, activation="relu", name=f"head{index}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"head{index}_dropout")(x)
    if dropout > 0 and not head:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="abnormal")(x)
    return keras.Model(inputs, outputs, name=name)
