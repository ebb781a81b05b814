"""Plugin registry: discovery through the ``mura_ens.plugins`` entry-point group.

Built-in and third-party plugins travel the same path: a distribution
declares ``[project.entry-points."mura_ens.plugins"] NAME = "module:obj"``
and ``obj`` (an instance, or a class instantiated without arguments) is the
plugin. The core never imports a plugin by name.

Entry points are loaded once, on first use. A plugin whose import fails is
kept as *broken* (shown in ``mura-ens plugins``) instead of breaking the CLI.
``MURA_ENS_PLUGINS=a,b`` loads only those entry points. Tests and embedding
code can :func:`register` / :func:`unregister` plugin objects directly
(like ``llm``'s plugin manager). Importing this module imports no Keras.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from dataclasses import dataclass
from typing import Any

from .constants import PLUGIN_GROUP, PLUGINS_ENV
from .errors import PluginError
from .plugin import GENERALIST, SPECIALIST_FAMILY, check_plugin


@dataclass
class Entry:
    """One registry row: a loaded plugin, or the error that kept it from loading."""

    name: str
    plugin: Any = None
    distribution: str = ""
    version: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.plugin is not None and not self.error


#: name -> Entry, filled from entry points on first use and by :func:`register`.
_ENTRIES: dict[str, Entry] = {}
_LOADED = False


def _enabled_names() -> set[str] | None:
    value = os.environ.get(PLUGINS_ENV, "").strip()
    if not value:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _load_entry_points() -> None:
    global _LOADED
    _LOADED = True
    enabled = _enabled_names()
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if enabled is not None and ep.name not in enabled:
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else ""
        dist_version = dist.version if dist is not None else ""
        if ep.name in _ENTRIES:
            if _ENTRIES[ep.name].distribution == dist_name:
                continue  # the same distribution seen twice on sys.path
            warnings.warn(
                f"plugin {ep.name!r} from {dist_name or ep.value} ignored: "
                f"already provided by {_ENTRIES[ep.name].distribution or 'a registered plugin'}",
                stacklevel=3,
            )
            continue
        entry = Entry(name=ep.name, distribution=dist_name, version=dist_version)
        try:
            obj = ep.load()
            plugin = obj() if isinstance(obj, type) else obj
            check_plugin(plugin)
            if plugin.name != ep.name:
                raise PluginError(f"entry point {ep.name!r} loads a plugin named {plugin.name!r}")
            entry.plugin = plugin
        except Exception as exc:  # a broken plugin must not break the CLI
            entry.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _ENTRIES[ep.name] = entry


def _entries() -> dict[str, Entry]:
    if not _LOADED:
        _load_entry_points()
    return _ENTRIES


def refresh() -> None:
    """Forget loaded entry points and scan again (registered plugins are dropped too)."""
    global _LOADED
    _ENTRIES.clear()
    _LOADED = False
    importlib.invalidate_caches()


def register(plugin: Any, *, distribution: str = "", version: str = "") -> Any:
    """Add a plugin object (or class) under its ``name``; return the plugin.

    Replaces an entry of the same name. Meant for tests and programs that
    embed mura-ens; installed plugins should use an entry point.
    """
    plugin = plugin() if isinstance(plugin, type) else plugin
    check_plugin(plugin)
    _entries()[plugin.name] = Entry(
        name=plugin.name,
        plugin=plugin,
        distribution=distribution or type(plugin).__module__,
        version=version,
    )
    return plugin


def unregister(name: str) -> None:
    """Remove the plugin ``name`` (a no-op when absent)."""
    _entries().pop(name, None)


def list_plugins() -> list[str]:
    """Sorted names of the plugins that loaded (broken ones are left out)."""
    return sorted(name for name, entry in _entries().items() if entry.ok)


def is_plugin(name: str) -> bool:
    """Whether ``name`` is a plugin that loaded."""
    entry = _entries().get(name)
    return entry is not None and entry.ok


def get_plugin(name: str) -> Any:
    """The plugin object registered as ``name``.

    Raises :class:`PluginError` (one line) for an unknown name, listing the
    available ones, or for a broken plugin, with its import error.
    """
    entries = _entries()
    entry = entries.get(name)
    if entry is None:
        available = ", ".join(list_plugins()) or "(none installed)"
        message = f"unknown plugin {name!r}; available: {available}"
        enabled = _enabled_names()
        if enabled is not None:
            message += f" ({PLUGINS_ENV}={','.join(sorted(enabled))})"
        raise PluginError(message)
    if not entry.ok:
        raise PluginError(f"plugin {name!r} is broken ({entry.distribution or 'unknown distribution'}): {entry.error}")
    return entry.plugin


def plugin_entry(name: str) -> Entry:
    """The registry row of ``name`` (distribution and version included); raises like :func:`get_plugin`."""
    get_plugin(name)
    return _entries()[name]


def plugin_rows() -> list[dict[str, Any]]:
    """One dict per plugin, sorted by name, for the ``mura-ens plugins`` table.

    Keys: ``name``, ``kind``, ``body_parts`` (list; empty = all),
    ``input_size``, ``weights``, ``distribution``, ``version``,
    ``description``, ``status`` (``"ok"`` or ``"broken: <error>"``), ``parameters``
    (one dict per hyper-parameter: ``name``, ``default``, ``choices`` (list, empty =
    any value of the default's type), ``help`` (``""`` when the plugin gives none)).
    A specialist family shows the input size and weights of its default base plugin.
    """
    rows = []
    for name in sorted(_entries()):
        entry = _entries()[name]
        plugin = entry.plugin
        defaults = _defaults_from(plugin)
        rows.append(
            {
                "name": name,
                "kind": getattr(plugin, "kind", GENERALIST) if plugin is not None else "",
                "body_parts": list(getattr(plugin, "body_parts", ()) or ()),
                "input_size": getattr(defaults, "default_input_size", None),
                "weights": getattr(defaults, "default_weights", None),
                "distribution": entry.distribution,
                "version": entry.version,
                "description": getattr(plugin, "description", "") if plugin is not None else "",
                "status": "ok" if entry.ok else f"broken: {entry.error}",
                "parameters": _parameters(plugin),
            }
        )
    return rows


def _parameters(plugin: Any) -> list[dict[str, Any]]:
    """The plugin's hyper-parameters with their defaults, allowed values and one-line help (may be empty)."""
    if plugin is None:
        return []
    defaults = getattr(plugin, "defaults", {}) or {}
    choices = getattr(plugin, "choices", {}) or {}
    helps = getattr(plugin, "param_help", {}) or {}
    return [
        {
            "name": str(key),
            "default": value,
            "choices": list(choices.get(key, ()) or ()),
            "help": " ".join(str(helps.get(key, "") or "").split()),
        }
        for key, value in defaults.items()
    ]


def _defaults_from(plugin: Any) -> Any:
    """The plugin whose default input size and weights a row shows: a specialist family shows its default base's."""
    if plugin is None or getattr(plugin, "kind", GENERALIST) != SPECIALIST_FAMILY:
        return plugin
    base = (getattr(plugin, "defaults", {}) or {}).get("base")
    entry = _entries().get(str(base)) if base else None
    return entry.plugin if entry is not None and entry.ok else plugin
