"""Reusing a finished run of the same configuration, and never mixing two configurations (no TensorFlow).

Before anything is built, ``train()`` asks :func:`settle` what to do with each run's name under ``--out``:

- a **finished** run (:func:`mura_ens.run_folder.is_finished_run`) of the *same configuration* at that
  name (for a derived name, also at ``<name>-2``, ``-3``, ...) is **reused**: one line says so, no file in
  it is touched and its folder is returned as if just trained; ``--overwrite`` retrains it instead and
  the new run replaces it when finished (:mod:`.atomic_run`);
- a finished run of *another* configuration at an explicit ``--name``: a one-line error naming the keys
  that differ (exit 2), unless ``--overwrite``; at a derived name (same parameters in the name, other
  data or another weights file), the new run gets the next free name (``-2``, ...), as before.

"The same configuration" (:func:`run_identity`) is the card's ``config`` section -- plugin, base, body
parts, every resolved plugin parameter, epochs, patience, batch size, input size, learning rate, weights,
class weights, augmentation, image cap, seed, validation fraction, resize policy, threshold and the
``--init-from`` run -- plus the data's manifest hash (``data.manifest_sha256``: the rows, independent of
where the data sit). Left out, because they change how a run is computed, not what it is: ``cache``,
``strategy`` (and mixed precision, XLA, TensorBoard logs, which are not in ``config``). The mura-ens and
library versions are not compared either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..run_folder import is_finished_run, is_run_folder, read_card

#: ``config`` keys that say how a run is computed, not what it is: not compared.
IGNORED_CONFIG_KEYS: tuple[str, ...] = ("cache", "strategy")
#: The identity key holding the data's manifest hash.
DATA_KEY = "manifest_sha256"


@dataclass(frozen=True)
class Settled:
    """What to do with one run: reuse the finished run ``name``, or build ``name`` (replacing it or not).

    ``note``: a line to show (why another name, what is replaced), or None.
    """

    name: str
    reuse: bool = False
    replace: bool = False
    note: str | None = None


def run_identity(config: Mapping[str, Any], manifest_sha256: str | None) -> dict[str, Any]:
    """What two runs must share to be "the same": ``config`` (the card's) without
    :data:`IGNORED_CONFIG_KEYS`, plus the manifest hash, as plain JSON values."""
    identity = {key: value for key, value in config.items() if key not in IGNORED_CONFIG_KEYS}
    identity[DATA_KEY] = manifest_sha256
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def card_identity(card: Mapping[str, Any]) -> dict[str, Any] | None:
    """:func:`run_identity` of a finished run's ``card.json``; None when it has no ``config``."""
    config = card.get("config")
    data = card.get("data")
    if not isinstance(config, Mapping):
        return None
    return run_identity(config, data.get(DATA_KEY) if isinstance(data, Mapping) else None)


def differing_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ (plugin parameters as ``params.<key>``), sorted; ``["config"]`` for no card."""
    if old is None:
        return ["config"]
    keys = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            keys += [f"{key}.{sub}" for sub in differing_keys(before, after)]
        elif before != after:
            keys.append(key)
    return keys


def settle(out: Path, name: str, identity: Mapping[str, Any], *, explicit: bool, overwrite: bool) -> Settled:
    """Reuse, replace or build beside: what ``train()`` does with the run called ``name`` under ``out``.

    ``explicit``: ``name`` came from ``--name`` (then only ``out/name`` is looked at, and another
    configuration there is an error unless ``overwrite``). Reads ``card.json`` files only.
    """
    for folder in _candidates(out, name, numbered=not explicit):
        if _identity_at(folder) == identity:
            return Settled(name=folder.name, reuse=not overwrite, replace=overwrite)
    target = out / name
    if is_finished_run(target):
        differs = ", ".join(differing_keys(_identity_at(target), identity))
        if overwrite:
            return Settled(
                name=name,
                replace=True,
                note=f"{target}: replacing a run of another configuration "
                f"(differs in: {differs}) once this one is finished (--overwrite)",
            )
        if explicit:
            raise UsageError(
                f"--name {name}: {target} holds a finished run of another configuration (differs in: {differs}); "
                "use --overwrite to replace it, or another --name"
            )
        return Settled(
            name=name,
            note=f"{target} holds another configuration (differs in: {differs}); this run gets the next free name",
        )
    if overwrite and is_run_folder(target):  # an unfinished run: replaced as well
        return Settled(name=name, replace=True)
    return Settled(name=name)


def reuse_line(run_dir: Path) -> str:
    """The line ``train()`` shows when it reuses ``run_dir``."""
    return f"reusing {run_dir}: a finished run with the same parameters and data (--overwrite retrains it)"


def _candidates(out: Path, name: str, *, numbered: bool) -> list[Path]:
    """``out/name``, then (``numbered``) ``out/name-2``, ``-3``, ... that exist, in number order."""
    found = [out / name]
    if numbered and out.is_dir():
        prefix = name + "-"
        numbers = sorted(
            int(entry.name[len(prefix) :])
            for entry in out.iterdir()
            if entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit()
        )
        found += [out / f"{name}-{number}" for number in numbers if number >= 2]
    return [folder for folder in found if is_finished_run(folder)]


def _identity_at(folder: Path) -> dict[str, Any] | None:
    try:
        return card_identity(read_card(folder))
    except UsageError:  # an unreadable card is no configuration
        return None
