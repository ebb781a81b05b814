"""What a model plugin is: the small base class plugin authors subclass.

A plugin is any object with the attributes of :class:`Plugin` and a
``build(config)`` method; subclassing is a convenience, not a requirement.
Plugins reach mura-ens only through the ``mura_ens.plugins`` entry-point group
(see ``docs/plugins.md``). This module never imports Keras: a plugin imports
it inside ``build`` so that listing plugins stays cheap.

``build(config)`` receives a plain dict:

``image_size``
    Side of the square input, in pixels.
``weights``
    ``None`` (random init), ``"imagenet"`` (Keras download) or a path to a
    local ``.h5`` / ``.weights.h5`` file.
every key of ``defaults``
    The plugin's hyper-parameters, defaults overridden by ``--param``.

and returns an uncompiled ``keras.Model`` mapping float32 RGB pixels in
0-255, shape ``(N, image_size, image_size, 3)``, to one sigmoid probability
``(N, 1)``. Preprocessing (rescaling, ImageNet normalisation) lives inside
the model as layers, so the exported ONNX graph takes raw resized pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import Any

from .constants import BODY_PARTS
from .errors import PluginError

#: ``kind`` of a plugin that builds one model serving the body parts it lists (all when empty).
GENERALIST = "generalist"
#: ``kind`` of a plugin that trains one model per body part from a base plugin.
SPECIALIST_FAMILY = "specialist family"
KINDS: tuple[str, ...] = (GENERALIST, SPECIALIST_FAMILY)

#: Accepted ``weights`` names besides a file path.
WEIGHTS_CHOICES: tuple[str, ...] = ("imagenet", "none")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Plugin:
    """Base class of model plugins. Subclass it, set the attributes, implement ``build``.

    Attributes
    ----------
    name : str
        Registry name; must equal the entry-point name.
    description : str
        One line for ``mura-ens plugins``.
    kind : str
        :data:`GENERALIST` or :data:`SPECIALIST_FAMILY`.
    body_parts : tuple of str
        Body parts the model serves; empty = all (a generalist).
    defaults : dict
        Hyper-parameters and their defaults. ``--param key=value`` may only
        set these keys and is parsed to the default's type.
    choices : dict
        Optional allowed values per parameter, e.g. ``{"pooling": ("max", "avg")}``.
    param_help : dict
        Optional one line per parameter, shown by ``mura-ens plugins --verbose``
        (a parameter without one shows an empty help).
    default_input_size : int
        Image side used when ``--image-size`` is not given.
    default_weights : str
        ``"none"`` or ``"imagenet"``: used when ``--weights`` is not given.
    feature_layer : str or None
        Optional: the name of the (top-level) layer whose (N, h, w, C) output heatmaps are drawn from
        (docs/explain.md). None: the input of the last global pooling / flatten layer.
    """

    name: str = ""
    description: str = ""
    kind: str = GENERALIST
    body_parts: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = {}
    choices: Mapping[str, tuple] = {}
    param_help: Mapping[str, str] = {}
    default_input_size: int = 256
    default_weights: str = "none"
    feature_layer: str | None = None

    def build(self, config: Mapping[str, Any]):
        """Return an uncompiled ``keras.Model``: (N, S, S, 3) float32 0-255 RGB -> (N, 1) probability."""
        raise NotImplementedError(f"plugin {self.name!r} does not implement build()")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.kind})>"


class SpecialistFamily(Plugin):
    """A plugin that trains one model per body part, each built by a base plugin.

    ``defaults["base"]`` names the base plugin; the other hyper-parameters are
    the base plugin's. The family builds nothing itself: the trainer looks the
    base up in the registry, expands the family into one run per body part
    present in the data, builds each model with the base and tags it with its
    part. ``mura-ens plugins`` shows the default base's input size and weights.
    """

    kind = SPECIALIST_FAMILY
    defaults: Mapping[str, Any] = {"base": "custom_cnn"}

    def build(self, config: Mapping[str, Any]):
        """Not used: a family's models are built by its base plugin (see the class docstring)."""
        raise PluginError(
            f"plugin {self.name!r} is a specialist family: its base plugin builds the models "
            f"(train it with --plugin {self.name} --base NAME)"
        )


def check_plugin(plugin: Any) -> None:
    """Raise :class:`PluginError` when ``plugin`` lacks what the trainer needs."""
    name = getattr(plugin, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin object {plugin!r} has no name")
    if not callable(getattr(plugin, "build", None)):
        raise PluginError(f"plugin {name!r} has no build(config) method")
    kind = getattr(plugin, "kind", GENERALIST)
    if kind not in KINDS:
        raise PluginError(f"plugin {name!r} has unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = [p for p in getattr(plugin, "body_parts", ()) if p not in BODY_PARTS]
    if unknown:
        raise PluginError(f"plugin {name!r} lists unknown body part(s) {', '.join(unknown)}")
    if not isinstance(getattr(plugin, "defaults", {}), Mapping):
        raise PluginError(f"plugin {name!r}: defaults must be a dict")


def parse_param_strings(items: Iterable[str]) -> dict[str, str]:
    """Split ``["key=value", ...]`` (the ``--param`` option) into a dict of strings."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PluginError(f"--param expects key=value, got {item!r}")
        params[key] = value.strip()
    return params


def resolve_params(plugin: Any, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plugin's defaults updated with ``overrides``, each parsed to its default's type.

    Strings (from the command line) are converted: ``int``, ``float``,
    ``bool`` (true/false/yes/no/1/0) or kept as ``str``. An unknown key or a
    value that does not parse raises :class:`PluginError` naming the valid
    keys or repeating the bad value.
    """
    defaults = dict(getattr(plugin, "defaults", {}) or {})
    choices = dict(getattr(plugin, "choices", {}) or {})
    name = getattr(plugin, "name", "?")
    params = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            valid = ", ".join(sorted(defaults)) or "(none)"
            raise PluginError(f"unknown parameter {key!r} for plugin {name}; valid: {valid}")
        params[key] = _coerce(name, key, value, defaults[key])
    for key, allowed in choices.items():
        if key in params and params[key] not in allowed:
            shown = ", ".join(map(str, allowed))
            raise PluginError(
                f"bad value {params[key]!r} for parameter {key!r} of plugin {name}; expected one of {shown}"
            )
    return params


def _coerce(plugin_name: str, key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if default is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()

    def bad(expected: str) -> PluginError:
        return PluginError(f"bad value {value!r} for parameter {key!r} of plugin {plugin_name}: expected {expected}")

    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise bad("true or false")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(text)
        except ValueError:
            raise bad("an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if kind is str:
        return text
    raise bad(f"a {kind.__name__}")


def at_least_one(config: Mapping[str, Any], key: str, *, plugin: str) -> int:
    """``config[key]`` as an int >= 1; a one-line ``ValueError`` repeating a bad value (for ``build``)."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"bad value {value!r} for parameter {key!r} of plugin {plugin}: expected an integer >= 1")
    return int(value)


def dropout_rate(config: Mapping[str, Any], key: str, *, plugin: str) -> float:
    """``config[key]`` as a dropout rate in [0, 1); a one-line ``ValueError`` repeating a bad value (for ``build``)."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) < 1:
        raise ValueError(f"bad value {value!r} for parameter {key!r} of plugin {plugin}: expected a rate in [0, 1)")
    return float(value)
