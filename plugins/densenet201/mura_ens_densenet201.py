"""mura-ens plugin ``densenet201``: Keras DenseNet201 backbone, pooling, optional MLP head, sigmoid.

ImageNet normalisation (``preprocess_input``'s "torch" mode) is inside the
model as a layer. ``trainable_after`` freezes the backbone layers before that
index (606 of 707 was the seed study's best).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mura_ens.plugin import Plugin


class DenseNet201Plugin(Plugin):
    name = "densenet201"
    description = "Keras DenseNet201, ImageNet normalisation, pooling, optional MLP head"
    defaults = {"trainable_after": 606, "head": "", "dropout": 0.25, "pooling": "avg"}
    choices = {"pooling": ("avg", "max")}
    param_help = {
        "trainable_after": "backbone layers from this index on are fine-tuned, earlier ones frozen (0 = all trainable)",
        "head": "MLP head before the sigmoid unit, e.g. 512-512 (empty = none)",
        "dropout": "dropout rate after each head layer (before the sigmoid unit when there is no head), in [0, 1)",
        "pooling": "global pooling of the last feature map: avg or max",
    }
    default_input_size = 224
    default_weights = "imagenet"

    def build(self, config: Mapping[str, Any]):
        import keras

        from mura_ens.training.backbones import backbone_classifier

        return backbone_classifier(keras.applications.DenseNet201, config, normalization="torch", name="densenet201")


plugin = DenseNet201Plugin()
