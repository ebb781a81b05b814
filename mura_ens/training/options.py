"""What one ``train()`` call is asked to do: :class:`TrainOptions`, checked once when it is made (no TensorFlow).

The CLI (``mura-ens train``) and Python callers build a :class:`TrainOptions`;
:func:`mura_ens.training.train` fills in the plugin's defaults (input size,
weights) and trains every model of the call with the resulting
:class:`RunConfig`, which is also what ``card.json`` records as ``config``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from ..constants import BODY_PARTS
from ..errors import UsageError
from ..plugin import parse_param_strings
from ..run_folder import DEFAULT_THRESHOLD
from .strategy import check_strategy

#: Adam's learning rate when ``lr`` is not given (and no warm start asks for less).
DEFAULT_LR = 1e-3
#: The largest ``image_size`` accepted (MURA images are at most 512 px; no override).
MAX_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class TrainOptions:
    """Options of one training call; every value is checked when the object is made.

    A bad value raises :class:`~mura_ens.errors.UsageError` (a bad ``params``
    item: :class:`~mura_ens.errors.PluginError`) with a one-line message that
    repeats it. Change a field with :func:`dataclasses.replace`, which checks
    again.

    Attributes
    ----------
    body_part : str, optional
        Train on (and tag the model with) one body part only.
    epochs, patience : int
        Maximum epochs (>= 1); early stopping patience on ``val_loss`` (>= 0,
        best weights restored). The learning rate drops by 0.2 after
        ``max(1, patience // 2)`` epochs without improvement.
    batch_size : int
        Images per step *and replica* (a step takes ``batch_size x replicas`` images).
    image_size : int, optional
        Square input side, 16 to :data:`MAX_IMAGE_SIZE` (1024); default: the plugin's ``default_input_size``.
        Training also refuses a batch whose estimated memory is above what the machine has
        (:mod:`mura_ens.training.resources`).
    lr : float, optional
        Adam's learning rate, used as given whatever the number of replicas.
        Default :data:`DEFAULT_LR` (1e-3); with ``init_from``, 0.1 x the learning rate of that run
        (:data:`mura_ens.training.warm_start.WARM_START_LR_FACTOR`).
    weights : str or path, optional
        ``"imagenet"``, ``"none"`` or a local ``.h5`` / ``.weights.h5`` file;
        default: the plugin's ``default_weights``. A file is looked for when training starts.
    class_weights : bool
        Weight the loss with the MURA paper's per-body-part class weights of the training fold.
    augment : bool
        Random flips and rotations (+-30 degrees) on training batches.
    max_images : int, optional
        At most this many images per fold (whole studies, seeded): for quick runs.
    seed : int
        Seed of the train/val split, the initialisation and the shuffling.
    val_fraction : float
        Share of the training studies held out for validation (by patient), strictly between 0 and 1.
    params : dict or list of "key=value"
        Plugin hyper-parameters; a list (``--param``) is split here, values are
        checked against the plugin's defaults when training starts. Stored read-only.
    base : str, optional
        Base plugin of a specialist family (default: the family's ``defaults["base"]``).
    name : str, optional
        Run name (default: derived from the parameters, :mod:`mura_ens.training.run_names`,
        e.g. ``densenet201-224-tla690-e20-wc-aug``; plus the body part).
    overwrite : bool
        Retrain when the run folder already holds a finished run of the same configuration (which is
        otherwise reused) or, at an explicit ``name``, of another one (otherwise an error); the new run
        replaces it once finished (:mod:`mura_ens.training.reuse`).
    tensorboard : bool
        Write TensorBoard logs (per-epoch loss, AUC, accuracy, kappa, learning rate; the model graph)
        to ``tensorboard/`` in the run folder.
    mixed_precision, xla : bool, optional
        Default: on when a GPU is present; always off on CPU.
    progress : bool
        Print data, device and one line per epoch on stderr.
    resize_policy : str
        ``stretch`` (MURA paper) or ``pad``; recorded in the ONNX metadata.
    strategy : str
        ``auto``, ``one``, ``mirrored`` or ``multiworker`` (see :mod:`mura_ens.training.strategy`); stored lower-case.
    cache : str or path, optional
        Folder of a decoded-image cache (:mod:`mura_ens.training.cache`); stored as a string.
        A path that is a file is refused when training starts, before anything is created.
    init_from : str or path, optional
        A finished run (``card.json`` present) of the same plugin (a family's base) and input size whose
        ``best.keras`` weights start every model of the call, then fine-tuned (see
        :mod:`mura_ens.training.warm_start`); plugin parameters and input size default to that run's.
        Stored as an absolute path string; the folder is checked when training starts.
    explain_layer : str, optional
        The layer whose output heatmaps are drawn from (``train --explain-layer``), overriding the plugin's
        ``feature_layer`` and the target rule (docs/explain.md); kept in ``card.json`` ``config`` (when
        given), so ``mura-ens export RUN_DIR`` uses it again. A name the model lacks is recorded in
        ``explain.json`` as the reason it has no heatmaps.
    """

    body_part: str | None = None
    epochs: int = 100
    patience: int = 10
    batch_size: int = 32
    image_size: int | None = None
    lr: float | None = None
    weights: str | os.PathLike | None = None
    class_weights: bool = True
    augment: bool = True
    max_images: int | None = None
    seed: int = 0
    val_fraction: float = 0.2
    params: Mapping[str, Any] | Iterable[str] | None = field(default_factory=dict)
    base: str | None = None
    name: str | None = None
    mixed_precision: bool | None = None
    xla: bool | None = None
    progress: bool = True
    resize_policy: str = "stretch"
    strategy: str = "auto"
    cache: str | os.PathLike | None = None
    init_from: str | os.PathLike | None = None
    overwrite: bool = False
    tensorboard: bool = True
    explain_layer: str | None = None

    def __post_init__(self) -> None:
        if self.body_part is not None and self.body_part not in BODY_PARTS:
            raise UsageError(f"unknown body part {self.body_part!r}; expected one of {', '.join(BODY_PARTS)}")
        self._set("epochs", _whole("epochs", self.epochs, 1))
        self._set("patience", _whole("patience", self.patience, 0))
        self._set("batch_size", _whole("batch-size", self.batch_size, 1))
        if self.image_size is not None:
            self._set("image_size", _whole("image-size", self.image_size, 16))
            if self.image_size > MAX_IMAGE_SIZE:
                raise UsageError(
                    f"image-size must be <= {MAX_IMAGE_SIZE}, got {self.image_size} (MURA images are at most 512 px "
                    "on their longest side; a larger input only upsamples them and multiplies memory and time)"
                )
        if self.max_images is not None:
            self._set("max_images", _whole("max-images", self.max_images, 1))
        self._set("seed", _whole("seed", self.seed, 0))
        if self.lr is not None:
            if not (_is_number(self.lr) and float(self.lr) > 0 and math.isfinite(float(self.lr))):
                raise UsageError(f"lr must be a positive number, got {self.lr}")
            self._set("lr", float(self.lr))
        if not (_is_number(self.val_fraction) and 0.0 < float(self.val_fraction) < 1.0):
            raise UsageError(f"val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        self._set("val_fraction", float(self.val_fraction))
        for key in ("class_weights", "augment", "progress", "overwrite", "tensorboard"):
            _flag(key, getattr(self, key), optional=False)
        for key in ("mixed_precision", "xla"):
            _flag(key, getattr(self, key), optional=True)
        from ..data.images import check_policy

        check_policy(self.resize_policy)
        self._set("strategy", check_strategy(self.strategy))
        self._set("params", MappingProxyType(_params(self.params)))
        if self.weights is not None:
            self._set("weights", os.fspath(self.weights))
        self._set("cache", str(self.cache) if self.cache else None)
        self._set("init_from", _folder("init-from", self.init_from))
        if self.explain_layer is not None and (not isinstance(self.explain_layer, str) or not self.explain_layer):
            raise UsageError(f"explain-layer must be a layer name, got {self.explain_layer!r}")

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)  # normalising a frozen instance, in __post_init__ only

    def run_config(self, *, image_size: int, weights: str | None, default_lr: float = DEFAULT_LR) -> RunConfig:
        """The settings every model of the call uses, with the plugin's input size and resolved weights.

        ``default_lr``: the learning rate when ``lr`` is not given (a warm start passes its fine-tuning rate).
        """
        return RunConfig(
            epochs=self.epochs,
            patience=self.patience,
            batch_size=self.batch_size,
            image_size=int(image_size),
            lr=float(self.lr if self.lr is not None else default_lr),
            weights=weights,
            class_weights=self.class_weights,
            augment=self.augment,
            max_images=self.max_images,
            seed=self.seed,
            val_fraction=self.val_fraction,
            resize_policy=self.resize_policy,
            threshold=DEFAULT_THRESHOLD,
            strategy=self.strategy,
            cache=None if self.cache is None else str(self.cache),
            init_from=None if self.init_from is None else str(self.init_from),
            explain_layer=self.explain_layer,
        )


@dataclass(frozen=True)
class RunConfig:
    """:class:`TrainOptions` with the plugin's defaults filled in: how every model of one call is trained.

    ``weights`` is ``None`` (random init), ``"imagenet"`` or an absolute file
    path. :meth:`as_dict` is the ``config`` of ``card.json`` (after plugin, base,
    body parts and params), in this field order.
    """

    epochs: int
    patience: int
    batch_size: int
    image_size: int
    lr: float
    weights: str | None
    class_weights: bool
    augment: bool
    max_images: int | None
    seed: int
    val_fraction: float
    resize_policy: str
    threshold: float
    strategy: str
    cache: str | None
    init_from: str | None = None
    explain_layer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, in field order (``explain_layer`` only when set: runs made before it
        existed keep their identity)."""
        fields = asdict(self)
        if fields["explain_layer"] is None:
            del fields["explain_layer"]
        return fields


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise UsageError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _folder(name: str, value: Any) -> str | None:
    """``None``, or ``value`` (a non-empty str or path) as an absolute path string."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise UsageError(f"{name} must be a folder path, got {value!r}")
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


def _flag(name: str, value: Any, *, optional: bool) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        allowed = "true, false or None" if optional else "true or false"
        raise UsageError(f"{name.replace('_', '-')} must be {allowed}, got {value!r}")


def _params(params: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Mapping):
        return {str(key): value for key, value in params.items()}
    if isinstance(params, str):
        raise UsageError(f"params must be a dict or a list of 'key=value' strings, got the string {params!r}")
    return parse_param_strings(params)
