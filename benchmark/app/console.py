"""What the user reads, in one voice: a line per event on stderr, `tailbench: ...` for the
command and `[i/n] cell: ...` for a cell, our own warnings (DataWarning) as
`tailbench: warning: ...`, and on a terminal tqdm bars over the cells, a study's trials and
an epoch's batches. Third-party libraries are turned down (Optuna's per-trial INFO lines,
MLflow's and alembic's database messages), not reformatted; their warnings keep their own
format."""

from __future__ import annotations

import sys
import warnings
from typing import TextIO

from tqdm.auto import tqdm

import studies
import tracking
from benchmark.errors import DataWarning


def quiet_libraries() -> None:
    """Optuna at WARNING, MLflow's and alembic's loggers at WARNING."""
    studies.quiet_logs()
    tracking.quiet_logs()


def one_line_warnings() -> None:
    """Show a DataWarning (ours) as one console line, `tailbench: warning: <message>`, and hand
    every other warning to the `warnings.showwarning` that was there before, in its own format.
    Wraps that hook once: calling this again changes nothing."""
    previous = warnings.showwarning
    if getattr(previous, "tailbench", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            Console(file).note(f"warning: {message}")
        else:
            previous(message, category, filename, lineno, file, line)

    show.tailbench = True
    warnings.showwarning = show


class Console:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def _print(self, text: str) -> None:
        # tqdm.write keeps the progress bars (cells, trials, batches) whole on a terminal
        tqdm.write(text, file=self.stream or sys.stderr)

    def note(self, text: str) -> None:
        self._print(f"tailbench: {text}")

    def error(self, command: str, text: str) -> None:
        self._print(f"tailbench {command}: error: {text}")

    def cell(self, i: int, n: int, name: str):
        """The voice of one cell of a grid: `say(text)` prints `[i/n] name: text`."""
        return lambda text: self._print(f"[{i}/{n}] {name}: {text}")
