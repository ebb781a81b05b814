"""`mura-ens train`: train a plugin's model(s), evaluate on the test fold, export to ONNX."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app


@app.command("train")
def train_command(
    plugin: str = typer.Option(..., "--plugin", help="Plugin name (see 'mura-ens plugins')."),
    data: Path = typer.Option(
        ..., "--data", help="MURA-layout folder, folder with the official CSVs, or manifest CSV."
    ),
    out: Path = typer.Option(..., "--out", help="Folder that receives one run folder per model."),
    body_part: str | None = typer.Option(None, "--body-part", help="Train on one body part only, e.g. XR_WRIST."),
    epochs: int = typer.Option(100, "--epochs", help="Maximum number of epochs."),
    patience: int = typer.Option(10, "--patience", help="Early stopping patience on val_loss (epochs)."),
    batch_size: int = typer.Option(
        32,
        "--batch-size",
        help="Images per step and replica: a step takes batch-size x replicas images (global batch).",
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Square input side in pixels [default: the plugin's, e.g. 256]."
    ),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate, used as given whatever the number of replicas."),
    weights: str | None = typer.Option(
        None, "--weights", help="imagenet | none | PATH to a local .h5/.weights.h5 file [default: the plugin's]."
    ),
    class_weights: bool = typer.Option(
        True, "--class-weights/--no-class-weights", help="MURA per-body-part class weights."
    ),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random flips and rotations (+-30 deg)."),
    max_images: int | None = typer.Option(None, "--max-images", help="At most N images per fold (whole studies)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the initialisation and the shuffling."),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", help="Share of training studies held out for validation (by patient)."
    ),
    param: list[str] | None = typer.Option(
        None, "--param", "-p", help="Plugin hyper-parameter key=value (repeatable)."
    ),
    base: str | None = typer.Option(None, "--base", help="Base plugin of a specialist family [default: custom_cnn]."),
    name: str | None = typer.Option(None, "--name", help="Run name [default: the plugin name, plus the body part]."),
    resize_policy: str = typer.Option("stretch", "--resize-policy", help="stretch (as the MURA paper) or pad."),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        metavar="DIR",
        help="Store decoded, resized images in DIR (memory-mapped) so later epochs and runs skip PNG decoding.",
    ),
    mixed_precision: bool | None = typer.Option(
        None, "--mixed-precision/--no-mixed-precision", help="float16 compute [default: on with a GPU, off on CPU]."
    ),
    xla: bool | None = typer.Option(
        None, "--xla/--no-xla", help="XLA compilation [default: on with a GPU, off on CPU]."
    ),
    strategy: str = typer.Option(
        "auto",
        "--strategy",
        help="auto (several GPUs: mirrored, else one) | one | mirrored (all GPUs of this machine) | "
        "multiworker (several machines, from TF_CONFIG; only the chief writes the run folder).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines, only the run folders."),
) -> None:
    """Train, evaluate on the test split (MURA valid) and export model.onnx; print the run folder(s).

    Writes OUT/<run>/{history.tsv, curves.png, best.keras, evaluation.json,
    card.json, model.onnx}. A specialist family (e.g. --plugin specialists)
    writes one run per body part present in the data. With --strategy
    multiworker only the chief writes and prints run folders.
    """
    from ..training import train

    runs = train(
        plugin,
        data,
        out,
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
    )
    for run in runs:
        typer.echo(str(run))
