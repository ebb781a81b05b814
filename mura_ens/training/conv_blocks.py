"""Building blocks for the plain CNN plugins (``custom_cnn``, ``feedforward_cnn``, third-party ones alike).

A plugin reads its parameters with :func:`conv_settings` and builds with
:func:`conv_stage` (convolutions, batch norm, ReLU, spatial dropout, then 2x2
pooling) and :func:`sigmoid_classifier` (rescaled input in, global average
pooling, dropout and one sigmoid unit out). Layer names are the caller's
prefix plus ``_conv1``, ``_bn1``, ``_relu1``, ``_sdrop1``, so a plugin's graph
(and its saved weights) keeps the names it had. Keras is imported inside the
functions: a plugin calls them from ``build`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..plugin import at_least_one, dropout_rate


@dataclass(frozen=True)
class ConvSettings:
    """What every conv stage of a plain CNN plugin is made of, from its parameters."""

    filters: int  # of the first stage (doubling per stage is the caller's choice)
    stages: int
    convs: int  # per stage
    batch_norm: bool
    bn_momentum: float
    spatial_dropout: float  # 0: no SpatialDropout2D layer
    dropout: float  # before the sigmoid unit; 0: no Dropout layer
    pooling: str  # "max" | "avg"

    def pool(self, name: str) -> Any:
        """A 2x2 pooling layer of the configured kind; "same" padding keeps at least 1x1 on small inputs."""
        from keras import layers

        kind = layers.MaxPooling2D if self.pooling == "max" else layers.AveragePooling2D
        return kind(2, padding="same", name=name)


def conv_settings(config: Mapping[str, Any], *, plugin: str, stages: str, convs: str) -> ConvSettings:
    """The :class:`ConvSettings` of ``config`` (keys ``starting_filters``, ``stages``, ``convs``, ``batch_norm``,
    ``bn_momentum``, ``spatial_dropout``, ``dropout``, ``pooling``); a bad value is a one-line ``ValueError``.

    Refuses ``weights="imagenet"``: a plain CNN has no ImageNet weights.
    """
    if config.get("weights") == "imagenet":
        raise ValueError(f"{plugin} has no ImageNet weights: use --weights none or --weights PATH")
    return ConvSettings(
        filters=at_least_one(config, "starting_filters", plugin=plugin),
        stages=at_least_one(config, stages, plugin=plugin),
        convs=at_least_one(config, convs, plugin=plugin),
        batch_norm=bool(config["batch_norm"]),
        bn_momentum=float(config["bn_momentum"]),
        spatial_dropout=dropout_rate(config, "spatial_dropout", plugin=plugin),
        dropout=dropout_rate(config, "dropout", plugin=plugin),
        pooling=str(config["pooling"]),
    )


def conv_stage(x: Any, filters: int, settings: ConvSettings, *, prefix: str, pool_name: str) -> Any:
    """``settings.convs`` x (3x3 conv, batch norm, ReLU, spatial dropout) named ``<prefix>_*``, then pooling."""
    from keras import layers

    for conv in range(1, settings.convs + 1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not settings.batch_norm, name=f"{prefix}_conv{conv}")(x)
        if settings.batch_norm:
            x = layers.BatchNormalization(momentum=settings.bn_momentum, name=f"{prefix}_bn{conv}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{conv}")(x)
        if settings.spatial_dropout > 0:
            x = layers.SpatialDropout2D(settings.spatial_dropout, name=f"{prefix}_sdrop{conv}")(x)
    return settings.pool(pool_name)(x)


def rescaled_input(image_size: int) -> tuple[Any, Any]:
    """The model's ``image`` input (uint8-range RGB, float32) and its pixels rescaled to [0, 1]."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    return inputs, layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)


def sigmoid_classifier(inputs: Any, features: Any, settings: ConvSettings, config: Mapping[str, Any], name: str) -> Any:
    """The model ``name``: global average pooling of ``features``, dropout, one sigmoid unit; loads
    ``config["weights"]`` when it is a file."""
    import keras
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="gap")(features)
    if settings.dropout > 0:
        x = layers.Dropout(settings.dropout, name="dropout")(x)
    # float32 output even under a mixed-precision policy.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="abnormal")(x)
    model = keras.Model(inputs, outputs, name=name)
    if config.get("weights") not in (None, "none"):
        model.load_weights(config["weights"])
    return model
