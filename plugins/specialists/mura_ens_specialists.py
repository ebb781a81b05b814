"""mura-ens plugin ``specialists``: one model per body part, each built by a base plugin.

``mura-ens train --plugin specialists --base custom_cnn`` trains the base
plugin once per body part present in the data; every exported model carries
its part in the ONNX ``body_parts`` metadata, so scoring applies it only to
that part. ``--param`` values go to the base plugin.
"""

from __future__ import annotations

from mura_ens.plugin import SpecialistFamily


class Specialists(SpecialistFamily):
    name = "specialists"
    description = "One model per body part from a base plugin (--base, default custom_cnn)"
    defaults = {"base": "custom_cnn"}


plugin = Specialists()
