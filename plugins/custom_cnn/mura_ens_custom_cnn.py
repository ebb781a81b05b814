"""mura-ens plugin ``custom_cnn``: the stacked conv-cell network of the seed study.

``cells`` cells, each ``convs_per_cell`` 3x3 convolutions (batch norm after
the convolution and before the ReLU, then ``SpatialDropout2D`` when
``spatial_dropout`` > 0) followed by 2x2 pooling; filters start at
``starting_filters`` and double per cell. Global average pooling, dropout,
then one sigmoid unit. Pixels are rescaled by 1/255 inside the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mura_ens.plugin import Plugin, at_least_one, dropout_rate


class CustomCNN(Plugin):
    name = "custom_cnn"
    description = "Stacked conv cells (conv-BN-ReLU-pool, filters doubling), dropout, sigmoid"
    defaults = {
        "starting_filters": 32,
        "cells": 6,
        "convs_per_cell": 1,
        "pooling": "max",
        "batch_norm": True,
        # Keras' default 0.99 leaves the moving statistics near their initial
        # values for hundreds of steps, so small data sets evaluate badly early
        # on; 0.9 (PyTorch's default) tracks them within a few dozen steps.
        "bn_momentum": 0.9,
        "dropout": 0.25,
        # Rate of a SpatialDropout2D after every convolution's activation (the
        # seed study's variant); 0 adds no layer, so the default graph is unchanged.
        "spatial_dropout": 0.0,
    }
    choices = {"pooling": ("max", "avg")}
    default_input_size = 256
    default_weights = "none"
    _COUNTS = ("starting_filters", "cells", "convs_per_cell")
    _RATES = ("dropout", "spatial_dropout")

    def build(self, config: Mapping[str, Any]):
        import keras
        from keras import layers

        size = int(config["image_size"])
        filters, cells, convs = (at_least_one(config, key, plugin=self.name) for key in self._COUNTS)
        dropout, spatial_dropout = (dropout_rate(config, key, plugin=self.name) for key in self._RATES)
        batch_norm = bool(config["batch_norm"])
        pool = layers.MaxPooling2D if config["pooling"] == "max" else layers.AveragePooling2D
        if config.get("weights") == "imagenet":
            raise ValueError("custom_cnn has no ImageNet weights: use --weights none or --weights PATH")

        inputs = keras.Input((size, size, 3), dtype="float32", name="image")
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
        for cell in range(1, cells + 1):
            for conv in range(1, convs + 1):
                x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"cell{cell}_conv{conv}")(x)
                if batch_norm:
                    x = layers.BatchNormalization(momentum=float(config["bn_momentum"]), name=f"cell{cell}_bn{conv}")(x)
                x = layers.Activation("relu", name=f"cell{cell}_relu{conv}")(x)
                if spatial_dropout > 0:
                    x = layers.SpatialDropout2D(spatial_dropout, name=f"cell{cell}_sdrop{conv}")(x)
            # "same" padding keeps at least 1x1 however many cells a small input goes through.
            x = pool(2, padding="same", name=f"cell{cell}_pool")(x)
            filters *= 2
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="dropout")(x)
        # float32 output even under a mixed-precision policy.
        outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="abnormal")(x)
        model = keras.Model(inputs, outputs, name="custom_cnn")
        if config.get("weights") not in (None, "none"):
            model.load_weights(config["weights"])
        return model


plugin = CustomCNN()
