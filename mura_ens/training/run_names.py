"""Run names from parameters: ``densenet201-224-tla690-head512x512-e20-wc-aug`` (no TensorFlow).

When ``--name`` is not given, ``mura-ens train`` names each run folder after what makes the run
(:func:`run_name`), as the seed study's ``ModelRunner`` did. The name is a pure function of the
resolved configuration: the same configuration always gets the same name, and two configurations
that differ in a parameter shown here get different names. Tokens are joined by ``-``, in this order:

1. the plugin (a specialist family: ``specialists-<base>``), then the input size in pixels;
2. each plugin parameter whose value differs from the plugin's default, in the order of the
   plugin's ``defaults``, as ``<abbreviation><value>`` (table below);
3. the weights when they are not the plugin's default: ``wnone``, ``wimagenet``, ``w<file stem>``;
4. each training option that differs from its default, as ``<abbreviation><value>`` (table below);
5. ``wc`` when the MURA class weights are on, ``aug`` when augmentation is on (both on by default,
   so the usual name ends in ``-wc-aug`` and a run without them is told by their absence).

A specialist family's runs add ``-<body part>`` (``specialists-custom_cnn-64-c2-e1-wc-aug-XR_HAND``);
``--body-part`` adds it to a generalist's name the same way.

=================== ======= ==================================================
parameter           token   example
=================== ======= ==================================================
trainable_after     tla     ``tla690``
head                head    ``head512x512`` (``512-512``; ``headnone`` for ``""``)
dropout             dp      ``dp0.5``
spatial_dropout     sdp     ``sdp0.1``
pooling             pool    ``poolmax``
starting_filters    f       ``f16``
cells               c       ``c3``
convs_per_cell      cpc     ``cpc2``
blocks              blk     ``blk4`` (feedforward_cnn)
convs_per_block     cpb     ``cpb2`` (feedforward_cnn)
batch_norm          bn      ``bn`` when true, ``nobn`` when false
bn_momentum         bnm     ``bnm0.99``
any other key       itself  ``growth_rate12``
=================== ======= ==================================================

=================== ======= ==================================================
training option     token   example
=================== ======= ==================================================
epochs              e       ``e20`` (default 100)
patience            pat     ``pat5`` (default 10)
batch_size          bs      ``bs16`` (default 32)
lr                  lr      ``lr0.0001`` (default 1e-3; with ``--init-from``, the fine-tuning rate)
seed                s       ``s1`` (default 0)
max_images          mi      ``mi200`` (default: all)
val_fraction        vf      ``vf0.3`` (default 0.2)
resize_policy       value   ``pad`` (default ``stretch``)
init_from           init    ``init`` (the source run is named in ``card.json``)
=================== ======= ==================================================

Values: whole numbers as they are, other numbers in plain decimal (``0.0001``, never ``1e-04``),
``-`` in a value becomes ``x`` (``512-512`` -> ``512x512``) and a minus sign ``m``, other
characters outside ``[A-Za-z0-9._+]`` become ``_``. A name longer than :data:`MAX_NAME_LENGTH`
keeps its start and ends in ``-`` + the first 8 hex digits of the full name's SHA-256.

Not in the name: ``--cache``, ``--strategy``, mixed precision, XLA and ``--no-tensorboard`` (how a
run is computed, not what it is) and the data. Whether an existing folder of that name holds *this*
run is :mod:`mura_ens.training.reuse`'s question.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Short tokens for plugin parameters (the built-in plugins'); any other key is written as it is.
PARAM_ABBREVIATIONS: Mapping[str, str] = {
    "trainable_after": "tla",
    "head": "head",
    "dropout": "dp",
    "spatial_dropout": "sdp",
    "pooling": "pool",
    "starting_filters": "f",
    "cells": "c",
    "convs_per_cell": "cpc",
    "blocks": "blk",
    "convs_per_block": "cpb",
    "batch_norm": "bn",
    "bn_momentum": "bnm",
}
#: Short tokens for training options (fields of :class:`~mura_ens.training.options.TrainOptions`), in name order.
OPTION_ABBREVIATIONS: Mapping[str, str] = {
    "epochs": "e",
    "patience": "pat",
    "batch_size": "bs",
    "lr": "lr",
    "seed": "s",
    "max_images": "mi",
    "val_fraction": "vf",
    "resize_policy": "",  # the value itself: ``pad``
    "init_from": "init",  # a flag: the path is not part of the name
}
#: Longer derived names are cut and end in a hash of the whole (folder names stay well under 255 bytes).
MAX_NAME_LENGTH = 120
_HASH_DIGITS = 8


@dataclass(frozen=True)
class NameSpec:
    """What a run name is made of: the resolved configuration and the defaults it is compared with.

    ``weights`` and ``default_weights`` are resolved (``None`` = random init, ``"imagenet"`` or a
    path); ``options`` maps training option names (:data:`OPTION_ABBREVIATIONS`) to their values and
    ``option_defaults`` to their defaults; an option missing from ``option_defaults`` is shown when set.
    """

    plugin: str
    image_size: int
    params: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None
    weights: str | None = None
    default_weights: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    option_defaults: Mapping[str, Any] = field(default_factory=dict)
    class_weights: bool = True
    augment: bool = True


def run_name(spec: NameSpec) -> str:
    """The run name of ``spec`` (see the module docstring for the scheme and its abbreviations)."""
    tokens = [spec.plugin] + ([spec.base] if spec.base else []) + [str(int(spec.image_size))]
    tokens += _param_tokens(spec.params, spec.defaults)
    if spec.weights != spec.default_weights and not spec.options.get("init_from"):
        tokens.append("w" + _weights_text(spec.weights))
    tokens += _option_tokens(spec.options, spec.option_defaults)
    tokens += (["wc"] if spec.class_weights else []) + (["aug"] if spec.augment else [])
    return _bounded("-".join(token for token in tokens if token))


def option_defaults(default_lr: float) -> dict[str, Any]:
    """The defaults of the training options in :data:`OPTION_ABBREVIATIONS` (from ``TrainOptions``), ``lr``
    being ``default_lr`` (1e-3, or a warm start's fine-tuning rate)."""
    from .options import TrainOptions

    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.name in OPTION_ABBREVIATIONS}
    return {**defaults, "lr": default_lr}


def param_token(key: str, value: Any) -> str:
    """One plugin parameter as a name token: ``tla690``, ``head512x512``, ``nobn``, ``poolmax``."""
    abbreviation = PARAM_ABBREVIATIONS.get(key, _text(key))
    if isinstance(value, bool):
        return abbreviation if value else "no" + abbreviation
    if isinstance(value, str) and not value.strip():
        return abbreviation + "none"
    return abbreviation + _value_text(value)


def _param_tokens(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    keys = [key for key in defaults if key in params] + sorted(key for key in params if key not in defaults)
    return [param_token(key, params[key]) for key in keys if key not in defaults or params[key] != defaults[key]]


def _option_tokens(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    tokens = []
    for key, abbreviation in OPTION_ABBREVIATIONS.items():
        value = options.get(key)
        if value is None or (key in defaults and _same(value, defaults[key])):
            continue
        tokens.append(abbreviation if key == "init_from" else abbreviation + _value_text(value))
    return tokens


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, float) or isinstance(default, float):
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return False
    return bool(value == default)


def _weights_text(weights: str | None) -> str:
    if weights is None or weights.lower() == "none":
        return "none"
    if weights.lower() == "imagenet":
        return "imagenet"
    stem = os.path.basename(weights)
    for suffix in (".weights.h5", ".h5", ".keras"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return _text(stem) or "file"


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _text(str(value))
    if isinstance(value, float):
        return _text(_plain_number(value))
    return _text(str(value))


def _plain_number(value: float) -> str:
    """``0.25`` -> ``0.25``, ``1e-05`` -> ``0.00001``, ``100.0`` -> ``100``."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    text = format(decimal.Decimal(repr(value)).normalize(), "f")
    return text[:-2] if text.endswith(".0") else text


def _text(value: str) -> str:
    text = re.sub(r"(?<=\d)[-,](?=\d)", "x", value.strip())  # 512-512 -> 512x512
    text = re.sub(r"^-", "m", text)  # a minus sign
    return re.sub(r"[^A-Za-z0-9._+]", "_", text)


def _bounded(name: str) -> str:
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_DIGITS]
    return name[: MAX_NAME_LENGTH - _HASH_DIGITS - 1].rstrip("-") + "-" + digest
