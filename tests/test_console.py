"""The console's voice for warnings: ours (DataWarning) as one line `tailbench: warning: ...`,
every other package's in its own format."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import warnings
from pathlib import Path

from benchmark.app.cli import main
from benchmark.data import cifar10
from benchmark.errors import DataWarning

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_prints_the_loaders_warning_as_one_line(cifar_dir, capsys, recwarn):
    """`tailbench train` on a CIFAR-10 copy whose checksums differ: main installs the format,
    the loader warns, the user reads one line; another category still reaches the hook that
    was there before (here pytest's recorder, in a terminal Python's own printer)."""
    # what earlier tests of this process left to the garbage collector (a psycopg connection
    # warns as it is collected) is theirs: collected and forgotten before this test's own
    gc.collect()
    recwarn.clear()
    assert main(["train", "--model", "cnn", "--dataset", "cifar10", "--data-dir",
                 str(cifar_dir), "--epochs", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    ours = [line for line in err if "differ from the official" in line]
    folder = cifar_dir / cifar10.FOLDER
    assert len(ours) == 1 and ours[0].startswith(f"tailbench: warning: {folder}: data_batch_1")
    assert not any("DataWarning" in line or "warnings.warn" in line for line in err)
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]  # shown, not passed on
    warnings.warn("someone else's", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["someone else's"]
    assert "someone else's" not in capsys.readouterr().err


def test_other_warnings_keep_pythons_format(tmp_path):
    """In a fresh interpreter, with Python's own showwarning: ours one line, a UserWarning
    from another package Python's two lines (file:line: category: message, then the source)."""
    (tmp_path / "otherlib.py").write_text(
        "import warnings\n\n\ndef f():\n    warnings.warn('theirs', UserWarning)\n")
    code = ("import warnings, otherlib\n"
            "from benchmark.app.console import one_line_warnings\n"
            "from benchmark.errors import DataWarning\n"
            "one_line_warnings(); one_line_warnings()  # twice: still one line a warning\n"
            "warnings.warn('ours', DataWarning)\n"
            "otherlib.f()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "tailbench: warning: ours"
    assert re.fullmatch(r".*otherlib\.py:5: UserWarning: theirs", lines[1]), lines
    assert lines[2].strip() == "warnings.warn('theirs', UserWarning)" and len(lines) == 3
