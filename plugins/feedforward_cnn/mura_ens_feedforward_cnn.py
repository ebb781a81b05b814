"""mura-ens plugin ``feedforward_cnn``: the seed study's feed-forward CNN (after the DenseNet paper).

``blocks`` conv blocks; each is ``convs_per_block`` 3x3 convolutions (batch
norm after the convolution and before the ReLU, then ``SpatialDropout2D``
when ``spatial_dropout`` > 0) and a 2x2 pooling, so a block's output has half
the side of its input. Filters start at ``starting_filters`` and double per
block, as in ``custom_cnn``; what differs is the wiring: block ``k``'s input
is the concatenation of the outputs of blocks ``k-1`` and ``k-2``, the older
one pooled once more (``pooling``) to match the side. Block 1 reads the
rescaled image, which also counts as "block 0" for block 2. The last block's
output goes through global average pooling, dropout and one sigmoid unit.
Pixels are rescaled by 1/255 inside the model.

Layer names (tests and heatmaps rely on them): ``block{k}_concat`` (the
input of block ``k`` >= 2), ``block{k}_skip_pool`` (block ``k-2``'s output
pooled to match), ``block{k}_conv{c}`` / ``_bn{c}`` / ``_relu{c}`` /
``_sdrop{c}``, ``block{k}_pool`` (the block's output; the last block's is
``features``, the :attr:`FeedforwardCNN.feature_layer` heatmaps are drawn
from), then ``gap``, ``dropout`` and ``abnormal``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mura_ens.plugin import Plugin, at_least_one, dropout_rate


@dataclass(frozen=True)
class _BlockSettings:
    """How every conv block is made (from the plugin's parameters)."""

    convs: int
    batch_norm: bool
    bn_momentum: float
    spatial_dropout: float
    pool: Any  # keras.layers.MaxPooling2D or AveragePooling2D


class FeedforwardCNN(Plugin):
    name = "feedforward_cnn"
    description = "Feed-forward conv blocks (each fed the two previous blocks' outputs), dropout, sigmoid"
    defaults = {
        "starting_filters": 32,
        "blocks": 6,
        "convs_per_block": 1,
        "pooling": "max",
        "batch_norm": True,
        # 0.9 rather than Keras' 0.99, for the reason given in custom_cnn.
        "bn_momentum": 0.9,
        "dropout": 0.25,
        # Rate of a SpatialDropout2D after every convolution's activation; 0 adds no layer.
        "spatial_dropout": 0.0,
    }
    choices = {"pooling": ("max", "avg")}
    default_input_size = 256
    default_weights = "none"
    #: The last block's output: the feature map explain artifacts (heatmaps) read.
    feature_layer = "features"
    _COUNTS = ("starting_filters", "blocks", "convs_per_block")
    _RATES = ("dropout", "spatial_dropout")

    def build(self, config: Mapping[str, Any]):
        import keras
        from keras import layers

        filters, blocks, convs = (at_least_one(config, key, plugin=self.name) for key in self._COUNTS)
        dropout, spatial_dropout = (dropout_rate(config, key, plugin=self.name) for key in self._RATES)
        if config.get("weights") == "imagenet":
            raise ValueError("feedforward_cnn has no ImageNet weights: use --weights none or --weights PATH")
        settings = _BlockSettings(
            convs=convs,
            batch_norm=bool(config["batch_norm"]),
            bn_momentum=float(config["bn_momentum"]),
            spatial_dropout=spatial_dropout,
            pool=layers.MaxPooling2D if config["pooling"] == "max" else layers.AveragePooling2D,
        )
        size = int(config["image_size"])
        inputs = keras.Input((size, size, 3), dtype="float32", name="image")
        older = None
        newer = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)  # "block 0"
        for block in range(1, blocks + 1):
            x = newer
            if older is not None:
                # "same" padding: ceil(n / 2) on both paths, so the sides match for any input size.
                skip = settings.pool(2, padding="same", name=f"block{block}_skip_pool")(older)
                x = layers.Concatenate(name=f"block{block}_concat")([newer, skip])
            output = self.feature_layer if block == blocks else f"block{block}_pool"
            older, newer = newer, _conv_block(layers, x, filters, block, settings, output)
            filters *= 2
        x = layers.GlobalAveragePooling2D(name="gap")(newer)
        if dropout > 0:
            x = layers.Dropout(dropout, name="dropout")(x)
        # float32 output even under a mixed-precision policy.
        outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="abnormal")(x)
        model = keras.Model(inputs, outputs, name="feedforward_cnn")
        if config.get("weights") not in (None, "none"):
            model.load_weights(config["weights"])
        return model


def _conv_block(layers: Any, x: Any, filters: int, block: int, settings: _BlockSettings, output: str) -> Any:
    """``settings.convs`` x (conv, batch norm, ReLU, spatial dropout), then 2x2 pooling named ``output``."""
    for conv in range(1, settings.convs + 1):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=not settings.batch_norm, name=f"block{block}_conv{conv}"
        )(x)
        if settings.batch_norm:
            x = layers.BatchNormalization(momentum=settings.bn_momentum, name=f"block{block}_bn{conv}")(x)
        x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        if settings.spatial_dropout > 0:
            x = layers.SpatialDropout2D(settings.spatial_dropout, name=f"block{block}_sdrop{conv}")(x)
    return settings.pool(2, padding="same", name=output)(x)


plugin = FeedforwardCNN()
