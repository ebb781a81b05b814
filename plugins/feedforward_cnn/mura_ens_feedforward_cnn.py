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
from typing import Any

from mura_ens.plugin import Plugin


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
    param_help = {
        "starting_filters": "filters of the first block; doubled in each next one (integer >= 1)",
        "blocks": "number of blocks, each halving the side (integer >= 1)",
        "convs_per_block": "3x3 convolutions per block (integer >= 1)",
        "pooling": "the 2x2 pooling: max or avg",
        "batch_norm": "batch norm after each convolution (which then has no bias)",
        "bn_momentum": "batch-norm moving-average momentum",
        "dropout": "dropout rate before the sigmoid unit, in [0, 1)",
        "spatial_dropout": "rate of a SpatialDropout2D after every convolution, in [0, 1); 0 adds no layer",
    }
    default_input_size = 256
    default_weights = "none"
    #: The last block's output (named so: tests and older explain artifacts refer to it).
    last_block = "features"

    def build(self, config: Mapping[str, Any]):
        from keras import layers

        from mura_ens.training.conv_blocks import conv_settings, conv_stage, rescaled_input, sigmoid_classifier

        settings = conv_settings(config, plugin=self.name, stages="blocks", convs="convs_per_block")
        inputs, newer = rescaled_input(int(config["image_size"]))  # the rescaled image is "block 0"
        older = None
        filters = settings.filters
        for block in range(1, settings.stages + 1):
            x = newer
            if older is not None:
                # "same" padding: ceil(n / 2) on both paths, so the sides match for any input size.
                skip = settings.pool(f"block{block}_skip_pool")(older)
                x = layers.Concatenate(name=f"block{block}_concat")([newer, skip])
            output = self.last_block if block == settings.stages else f"block{block}_pool"
            older, newer = newer, conv_stage(x, filters, settings, prefix=f"block{block}", pool_name=output)
            filters *= 2
        return sigmoid_classifier(inputs, newer, settings, config, self.name)


plugin = FeedforwardCNN()
