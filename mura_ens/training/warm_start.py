"""``--init-from RUN_DIR``: start every model of a call from the weights of a finished run (fine-tuning).

The typical use is warm-started specialists: ``mura-ens train --plugin
specialists --base custom_cnn --init-from runs/custom_cnn`` builds each body
part's model with the base plugin, loads the generalist's ``best.keras``
weights into it and fine-tunes it on that part's studies (early stopping on
the part's validation fold, as always).

Rules (checked before any data are scanned or TensorFlow is imported):

- ``RUN_DIR`` is a *finished* run (``card.json`` present, see
  :func:`mura_ens.run_folder.is_finished_run`) holding ``best.keras``;
- it was built by the same plugin as the new models (a family's base) at the
  same input size; otherwise a one-line :class:`UsageError` names both;
- the plugin parameters default to the run's (so the architecture matches);
  ``--param`` may still change those that leave the weights' shapes alone
  (e.g. ``dropout``); a shape mismatch is a one-line error when the weights load;
- the input size defaults to the run's; ``--weights`` cannot be combined with it;
- the learning rate defaults to :data:`WARM_START_LR_FACTOR` x the run's own
  (``config.lr`` in its card: 1e-4 after a default 1e-3 run); ``--lr`` overrides it.

The card of each new run gets an ``init_from`` section (:meth:`WarmStart.card_section`).
Only :meth:`WarmStart.load_into` imports TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..io import file_sha256
from ..run_folder import BEST_FILE, MODEL_FILE, is_finished_run, read_card

#: Default fine-tuning learning rate, relative to the learning rate the source run was trained with.
WARM_START_LR_FACTOR = 0.1
#: The learning rate assumed for a source run whose card does not record one.
SOURCE_LR_FALLBACK = 1e-3


@dataclass(frozen=True)
class WarmStart:
    """A finished run whose ``best.keras`` weights start the new models."""

    run_dir: Path
    model_name: str
    plugin: str  # the plugin that built the run's model (a family member: its base)
    input_size: int
    params: Mapping[str, Any] = field(default_factory=dict)
    source_lr: float = SOURCE_LR_FALLBACK
    model_sha256: str | None = None
    weights_sha256: str = ""

    @property
    def weights_file(self) -> Path:
        return self.run_dir / BEST_FILE

    def fine_tune_lr(self, lr: float | None) -> float:
        """``lr`` when given, else :data:`WARM_START_LR_FACTOR` x the source run's learning rate."""
        return float(lr) if lr is not None else WARM_START_LR_FACTOR * self.source_lr

    def hyper_overrides(self, params: Any) -> dict[str, Any]:
        """The source run's plugin parameters updated with the user's ``params`` mapping (a family's ``base`` left out)."""
        return {**self.params, **{key: value for key, value in dict(params or {}).items() if key != "base"}}

    def card_section(self, *, lr: float, lr_given: bool) -> dict[str, Any]:
        """What ``card.json`` records under ``init_from``: where the weights came from and the fine-tuning lr."""
        rule = "--lr" if lr_given else f"{WARM_START_LR_FACTOR:g} x the source run's lr {self.source_lr:g}"
        return {
            "run_dir": str(self.run_dir),
            "model_name": self.model_name,
            "plugin": self.plugin,
            "input_size": self.input_size,
            "model_sha256": self.model_sha256,
            "weights_file": str(self.weights_file),
            "weights_sha256": self.weights_sha256,
            "lr": lr,
            "lr_rule": rule,
        }

    def load_into(self, model) -> None:
        """Copy the source run's ``best.keras`` weights into ``model`` (built by the same plugin); one-line errors."""
        from .export import load_best_model

        try:
            source = load_best_model(self.weights_file, plugin=self.plugin)
        except Exception as exc:
            raise UsageError(
                f"--init-from {self.run_dir}: cannot load {BEST_FILE} ({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        try:
            model.set_weights(source.get_weights())
        except ValueError as exc:
            raise UsageError(
                f"--init-from {self.run_dir}: its weights do not fit the model built here ({_first_line(exc)}); "
                "leave out --param values that change the architecture"
            ) from exc


def read_source(run_dir: str | os.PathLike) -> WarmStart:
    """The finished run at ``run_dir``; :class:`UsageError` when it is missing, unfinished or has no weights."""
    path = Path(run_dir).expanduser().absolute()
    if not path.is_dir():
        raise UsageError(f"--init-from {path}: no such run folder")
    if not is_finished_run(path):
        raise UsageError(f"--init-from {path}: not a finished run (no card.json): wait for it or train it again")
    if not (path / BEST_FILE).is_file():
        raise UsageError(f"--init-from {path}: the run has no {BEST_FILE} to take weights from")
    card = read_card(path)
    config = card.get("config") or {}
    try:
        input_size = int(card.get("input_size") or config["image_size"])
        source_lr = float(config.get("lr") or SOURCE_LR_FALLBACK)
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"--init-from {path}: card.json does not say the run's input size") from None
    model = path / MODEL_FILE
    return WarmStart(
        run_dir=path,
        model_name=str(card.get("model_name") or path.name),
        plugin=str(card.get("builder") or card.get("base_plugin") or card.get("plugin") or ""),
        input_size=input_size,
        params=dict(config.get("params") or {}),
        source_lr=source_lr,
        model_sha256=file_sha256(model) if model.is_file() else None,
        weights_sha256=file_sha256(path / BEST_FILE),
    )


def check_compatible(
    source: WarmStart, *, builder_name: str, image_size: int | None, weights: str | os.PathLike | None
) -> None:
    """Refuse (one line, naming both sides) another plugin, another input size, or ``--weights`` as well."""
    size = source.input_size if image_size is None else int(image_size)
    if source.plugin != builder_name or size != source.input_size:
        raise UsageError(
            f"--init-from {source.run_dir}: that run is a {source.plugin or 'unknown'} model at "
            f"{source.input_size} px, this one builds {builder_name} at {size} px; "
            "warm-starting needs the same (base) plugin and input size"
        )
    if weights is not None:
        raise UsageError("--weights and --init-from both choose the starting weights: give one of them")


def start_from(
    run_dir: str | os.PathLike, *, builder_name: str, image_size: int | None, weights: str | os.PathLike | None
) -> WarmStart:
    """:func:`read_source` then :func:`check_compatible`: what ``train()`` calls before scanning any data."""
    source = read_source(run_dir)
    check_compatible(source, builder_name=builder_name, image_size=image_size, weights=weights)
    return source


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
