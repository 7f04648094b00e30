"""Open optuna-dashboard on the studies' storage, after checking it (`make dashboard`):

    .venv/bin/python -m studies.dashboard runs/optuna.journal --port 8080

optuna-dashboard takes a journal file's path as it is and an RDB URL as it is, so the command
is `optuna-dashboard <storage>`; checking first turns its stack traces into one sentence.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from benchmark.errors import UserError
from studies.storage import is_journal, storage_url


def dashboard_command(storage: str | Path | None = None, port: int = 8080,
                      host: str = "127.0.0.1") -> list[str]:
    """The optuna-dashboard command line for `storage` (UserError when there is nothing to
    show or the dashboard is not installed)."""
    url = storage_url(storage)
    if is_journal(url) and not Path(url).is_file():
        raise UserError(f"no Optuna journal at {url}: run `make benchmark` (or tailbench run) "
                         "with tuning first, or pass the --storage it used")
    exe = Path(sys.executable).with_name("optuna-dashboard")
    found = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    if not found:
        raise UserError("optuna-dashboard is not installed in this environment; "
                         "run `make install` (it is a dependency in pyproject.toml)")
    return [found, url, "--port", str(port), "--host", host]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.dashboard", description=__doc__)
    p.add_argument("storage", nargs="?", default=None,
                   help="journal file path or RDB URL (default runs/optuna.journal)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    try:
        cmd = dashboard_command(args.storage, args.port, args.host)
    except UserError as e:
        print(f"dashboard: {e}", file=sys.stderr)
        return 2
    print(f"optuna-dashboard on http://{args.host}:{args.port} ({cmd[1]})", file=sys.stderr)
    os.execv(cmd[0], cmd)  # replaces this process: Ctrl-C goes straight to the dashboard
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
