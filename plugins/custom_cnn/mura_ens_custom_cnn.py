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

from mura_ens.plugin import Plugin


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
    param_help = {
        "starting_filters": "filters of the first cell; doubled in each next one (integer >= 1)",
        "cells": "number of cells, each halving the side (integer >= 1)",
        "convs_per_cell": "3x3 convolutions per cell (integer >= 1)",
        "pooling": "the 2x2 pooling: max or avg",
        "batch_norm": "batch norm after each convolution (which then has no bias)",
        "bn_momentum": "batch-norm moving-average momentum",
        "dropout": "dropout rate before the sigmoid unit, in [0, 1)",
        "spatial_dropout": "rate of a SpatialDropout2D after every convolution, in [0, 1); 0 adds no layer",
    }
    default_input_size = 256
    default_weights = "none"

    def build(self, config: Mapping[str, Any]):
        from mura_ens.training.conv_blocks import conv_settings, conv_stage, rescaled_input, sigmoid_classifier

        settings = conv_settings(config, plugin=self.name, stages="cells", convs="convs_per_cell")
        inputs, x = rescaled_input(int(config["image_size"]))
        filters = settings.filters
        for cell in range(1, settings.stages + 1):
            x = conv_stage(x, filters, settings, prefix=f"cell{cell}", pool_name=f"cell{cell}_pool")
            filters *= 2
        return sigmoid_classifier(inputs, x, settings, config, self.name)


plugin = CustomCNN()
