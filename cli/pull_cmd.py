"""`edgescale pull`: a model into the local store, with progress; Ctrl-C keeps what arrived."""

from __future__ import annotations

import sys
import time
from typing import Any

import typer

from edgescale.cli.common import print_json
from edgescale.cli.options import JSON


def pull(
    source: str = typer.Argument(..., help="hf:ORG/REPO[@REVISION][:FILE.gguf|:QUANT], an https:// URL of a .gguf, "
                                           "or a local .gguf path to import."),
    name: str = typer.Option(None, "--name", help="The store name (default: the file's name, lower-cased)."),
    sha256: str = typer.Option(None, "--sha256", help="The file's expected sha256 (a URL has none otherwise; "
                                                      "Hugging Face gives its own)."),
    force: bool = typer.Option(False, "--force", help="Download again even if the store has it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = JSON,
) -> None:
    """Download a GGUF (resumable; checksummed; validated before it is registered) into the model
    store ($EDGESCALE_MODELS, else ~/.cache/edgescale/store). Then `-m NAME` works everywhere.
    EDGESCALE_OFFLINE=1 or HF_HUB_OFFLINE=1 forbid the network; HF_ENDPOINT picks a mirror."""
    from edgescale.models.download import mb
    from edgescale.models.pull import pull as do_pull
    from edgescale.models.store import store_dir

    bar = _Bar(enabled=not quiet and not as_json)
    try:
        with bar:
            result = do_pull(source, name=name, sha256=sha256, force=force, progress=bar.update)
    except KeyboardInterrupt:
        # the partial this pull was writing: the newest one (others may be older interrupted pulls)
        part = max((p for p in store_dir().glob("*/*.part") if p.stat().st_size), key=lambda p: p.stat().st_mtime,
                   default=None)
        where = f": {mb(part.stat().st_size)} kept in {part}" if part is not None else ""
        sys.stderr.write(f"error: interrupted{where}; run the same command to resume\n")
        raise typer.Exit(130) from None
    m = result.model
    if as_json:
        print_json({"name": m.name, "path": str(m.path), "source": m.source, "sha256": m.sha256, "size": m.size,
                    "downloaded": result.downloaded, "resumed_from": result.resumed_from,
                    "other_files": list(result.others)})
        return
    if result.others:
        typer.echo(f"chose {m.file}; the repository also has: {', '.join(result.others)}", err=True)
    how = ("resumed at " + mb(result.resumed_from) + ", ") if result.resumed_from else ""
    done = f"downloaded {how}{mb(result.downloaded)}" if result.downloaded else "already in the store"
    if m.source.startswith("/"):
        done = "imported"
    typer.echo(f"{m.name}: {done}; {mb(m.size)}, sha256 {m.sha256[:16]}...; {m.path}", err=True)
    typer.echo(f"run it: edgescale run -m {m.name} \"...\"", err=True)


class _Bar:
    """rich's progress bar (bytes, rate, ETA) on stderr, one task per phase; when stderr is not
    a terminal (a script's log), a line per tenth of the download instead."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.enabled
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._said: dict[str, int] = {}
        self._t0 = time.monotonic()

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                      transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, phase: str, done: int, total: int | None) -> None:
        if self.lines and phase == "download" and total:
            tenth = 10 * done // total
            if tenth > self._said.get(phase, 0):
                self._said[phase] = tenth
                rate = done / max(time.monotonic() - self._t0, 1e-6)
                sys.stderr.write(f"pull: {10 * tenth}% of {total / 1e6:,.1f} MB ({rate / 1e6:,.1f} MB/s)\n")
        if self._progress is None:
            return
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(phase, total=total, completed=0)
        self._progress.update(task, completed=done, total=total)
