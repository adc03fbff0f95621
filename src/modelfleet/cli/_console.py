"""Shared console output and the error guard for every command."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from modelfleet.errors import ModelfleetError

__all__ = ["EXIT_REFUSED", "err", "out", "progress_bar", "run_guarded"]

EXIT_REFUSED = 1

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def report_error(error: ModelfleetError) -> None:
    """Print one line naming the problem and its stable code."""
    err.print(f"[bold red]error:[/] {error.message} [dim]\\[{error.code}][/]")


def run_guarded(app: typer.Typer) -> int:
    """Run the Typer app; turn modelfleet errors into one line and exit status 1."""
    try:
        # Without standalone mode click returns a typer.Exit's code instead of raising it.
        status = app(standalone_mode=False)
    except ModelfleetError as error:
        report_error(error)
        return EXIT_REFUSED
    except typer.Exit as done:
        return int(done.exit_code)
    except typer.Abort:
        err.print("aborted")
        return 130
    except FileNotFoundError as missing:
        err.print(f"[bold red]error:[/] {missing.filename or missing}: no such file")
        return EXIT_REFUSED
    except Exception as click_error:  # click's usage errors carry their own exit code
        code = getattr(click_error, "exit_code", None)
        show = getattr(click_error, "show", None)
        if code is None or show is None:
            raise
        show()
        return int(code)
    return status if isinstance(status, int) else 0


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """Yield a ``(step, done, total)`` callback that drives a rich progress bar."""
    if not enabled:
        yield lambda _step, _done, _total: None
        return
    tasks: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as progress:

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=max(total, 1))
            progress.update(tasks[step], completed=done, total=max(total, 1))

        yield update
