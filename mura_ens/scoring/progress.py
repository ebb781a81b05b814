"""The scoring progress bar: images, studies, images/s and ETA on a terminal; nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: ``advance(n_images, n_studies)`` is called once per finished batch.
Advance = Callable[[int, int], None]


def wants_progress(progress: bool | None) -> bool:
    """``progress`` if given, else whether stderr is a terminal (quiet in CI and pipes)."""
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(
    enabled: bool, *, total_images: int, total_studies: int, done_images: int = 0, done_studies: int = 0
) -> Iterator[Advance]:
    """Yield an ``advance`` callback; draw a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda n_images, n_studies: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:6.1f} img/s" if speed else "     - img/s")

    bar = Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TextColumn("{task.fields[studies]}/{task.fields[total_studies]} studies"),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    state = {"studies": done_studies}
    with bar:
        task = bar.add_task(
            "scoring", total=total_images, completed=done_images, studies=done_studies, total_studies=total_studies
        )

        def advance(n_images: int, n_studies: int) -> None:
            state["studies"] += n_studies
            bar.update(task, advance=n_images, studies=state["studies"])

        yield advance
