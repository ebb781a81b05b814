"""mura-ens plugin ``specialists``: one model per body part, each built by a base plugin.

``mura-ens train --plugin specialists --base custom_cnn`` trains the base
plugin once per body part present in the data; every exported model carries
its part in the ONNX ``body_parts`` metadata, so scoring applies it only to
that part. ``--param`` values go to the base plugin.

``--init-from RUN_DIR`` starts every part's model from the ``best.keras``
weights of a finished run of the base plugin (a generalist) at the same input
size and fine-tunes it on the part's studies, by default at 0.1 x that run's
learning rate (:mod:`mura_ens.training.warm_start`, docs/plugins.md).
"""

from __future__ import annotations

from mura_ens.plugin import SpecialistFamily


class Specialists(SpecialistFamily):
    name = "specialists"
    description = "One model per body part from a base plugin (--base, default custom_cnn)"
    defaults = {"base": "custom_cnn"}
    param_help = {"base": "the plugin that builds each body part's model (--base); other --param values go to it"}


plugin = Specialists()
