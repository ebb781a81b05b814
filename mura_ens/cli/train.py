"""`mura-ens train`: train a plugin's model(s), evaluate on the test fold, export to ONNX.

A thin wrapper: the options become a :class:`~mura_ens.training.options.TrainOptions`
(which checks them) and go to :func:`mura_ens.train`. The option types are
declared once below so that the command's signature stays one line per option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app, said_when_interrupted

_BATCH_HELP = "Images per step and replica: a step takes batch-size x replicas images (global batch)."
_STRATEGY_HELP = (
    "auto (several GPUs: mirrored, else one) | one | mirrored (all GPUs of this machine) | "
    "multiworker (several machines, from TF_CONFIG; only the chief writes the run folder)."
)
_INIT_FROM_HELP = (
    "Start every model from the best.keras weights of a finished run (card.json present) of the same plugin "
    "(a family's base) and input size, then fine-tune: e.g. specialists from a generalist. Plugin parameters "
    "and input size default to that run's; the learning rate to 0.1 x its own (--lr overrides)."
)
_CACHE_HELP = "Store decoded, resized images in DIR (memory-mapped) so later epochs and runs skip PNG decoding."

PluginOpt = Annotated[str, typer.Option("--plugin", help="Plugin name (see 'mura-ens plugins').")]
DataOpt = Annotated[
    Path, typer.Option("--data", help="MURA-layout folder, folder with the official CSVs, or manifest CSV.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder that receives one run folder per model.")]
BodyPartOpt = Annotated[str | None, typer.Option("--body-part", help="Train on one body part only, e.g. XR_WRIST.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Maximum number of epochs.")]
PatienceOpt = Annotated[int, typer.Option("--patience", help="Early stopping patience on val_loss (epochs).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help=_BATCH_HELP)]
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", help="Square input side in pixels [default: the plugin's, e.g. 256].")
]
LrOpt = Annotated[
    float | None,
    typer.Option(
        "--lr",
        help="Adam learning rate, used as given whatever the number of replicas "
        "[default: 1e-3; with --init-from, 0.1 x that run's learning rate].",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", help="imagenet | none | PATH to a local .h5/.weights.h5 file [default: the plugin's]."),
]
ClassWeightsOpt = Annotated[
    bool, typer.Option("--class-weights/--no-class-weights", help="MURA per-body-part class weights.")
]
AugmentOpt = Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips and rotations (+-30 deg).")]
MaxImagesOpt = Annotated[int | None, typer.Option("--max-images", help="At most N images per fold (whole studies).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split, the initialisation and the shuffling.")]
ValFractionOpt = Annotated[
    float, typer.Option("--val-fraction", help="Share of training studies held out for validation (by patient).")
]
ParamOpt = Annotated[
    list[str] | None, typer.Option("--param", "-p", help="Plugin hyper-parameter key=value (repeatable).")
]
BaseOpt = Annotated[
    str | None, typer.Option("--base", help="Base plugin of a specialist family [default: custom_cnn].")
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="Run name [default: from the parameters, e.g. densenet201-224-tla690-e20-wc-aug]."),
]
_OVERWRITE_HELP = (
    "Retrain even when the run folder holds a finished run of this configuration and data (reused otherwise), "
    "or, with --name, of another configuration (an error otherwise); the new run replaces it when finished."
)
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)]
TensorBoardOpt = Annotated[
    bool,
    typer.Option(
        "--tensorboard/--no-tensorboard",
        help="TensorBoard logs in RUN/tensorboard (per-epoch loss, AUC, kappa, lr; the graph).",
    ),
]
ResizeOpt = Annotated[str, typer.Option("--resize-policy", help="stretch (as the MURA paper) or pad.")]
ExplainLayerOpt = Annotated[
    str | None,
    typer.Option(
        "--explain-layer",
        metavar="NAME",
        help="Layer whose output heatmaps are drawn from (default: the plugin's, else the last conv map with a "
        "side >= 7; docs/explain.md).",
    ),
]
CacheOpt = Annotated[Path | None, typer.Option("--cache", metavar="DIR", help=_CACHE_HELP)]
MixedOpt = Annotated[
    bool | None,
    typer.Option(
        "--mixed-precision/--no-mixed-precision", help="float16 compute [default: on with a GPU, off on CPU]."
    ),
]
XlaOpt = Annotated[
    bool | None, typer.Option("--xla/--no-xla", help="XLA compilation [default: on with a GPU, off on CPU].")
]
StrategyOpt = Annotated[str, typer.Option("--strategy", help=_STRATEGY_HELP)]
InitFromOpt = Annotated[Path | None, typer.Option("--init-from", metavar="RUN_DIR", help=_INIT_FROM_HELP)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines, only the run folders.")]


@app.command("train")
def train_command(
    plugin: PluginOpt,
    data: DataOpt,
    out: OutOpt,
    body_part: BodyPartOpt = None,
    epochs: EpochsOpt = 100,
    patience: PatienceOpt = 10,
    batch_size: BatchOpt = 32,
    image_size: ImageSizeOpt = None,
    lr: LrOpt = None,
    weights: WeightsOpt = None,
    class_weights: ClassWeightsOpt = True,
    augment: AugmentOpt = True,
    max_images: MaxImagesOpt = None,
    seed: SeedOpt = 0,
    val_fraction: ValFractionOpt = 0.2,
    param: ParamOpt = None,
    base: BaseOpt = None,
    name: NameOpt = None,
    resize_policy: ResizeOpt = "stretch",
    cache: CacheOpt = None,
    mixed_precision: MixedOpt = None,
    xla: XlaOpt = None,
    strategy: StrategyOpt = "auto",
    init_from: InitFromOpt = None,
    overwrite: OverwriteOpt = False,
    tensorboard: TensorBoardOpt = True,
    explain_layer: ExplainLayerOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train, evaluate on the test split (MURA valid) and export model.onnx; print the run folder(s).

    Writes OUT/<run>/{history.tsv, curves.png, best.keras, evaluation.json,
    card.json, model.onnx, model.txt, tensorboard/}; <run> is named after the
    parameters unless --name is given. A finished run of the same configuration
    and data already there is reused (said, nothing retrained) unless --overwrite.
    A specialist family (e.g. --plugin specialists)
    writes one run per body part present in the data; with --init-from RUN_DIR
    each starts from that run's weights (warm-started specialists). With
    --strategy multiworker only the chief writes and prints run folders.
    """
    from ..api import train
    from ..training import TrainOptions

    options = TrainOptions(
        body_part=body_part,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        image_size=image_size,
        lr=lr,
        weights=weights,
        class_weights=class_weights,
        augment=augment,
        max_images=max_images,
        seed=seed,
        val_fraction=val_fraction,
        params=list(param or []),
        base=base,
        name=name,
        mixed_precision=mixed_precision,
        xla=xla,
        progress=not quiet,
        resize_policy=resize_policy,
        strategy=strategy,
        cache=cache,
        init_from=init_from,
        overwrite=overwrite,
        tensorboard=tensorboard,
        explain_layer=explain_layer,
    )
    from ..training.checks import training_warnings_as_lines

    kept = f"the unfinished run was deleted, finished runs in {out} are kept; rerun the same command to go on"
    with said_when_interrupted(kept), training_warnings_as_lines():  # warnings: one line each, as they come
        runs = train(plugin, data, out, options)
    for run in runs:
        typer.echo(str(run.path))
