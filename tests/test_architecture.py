"""The layers of DESIGN.md hold: the import contracts in pyproject.toml pass (lint-imports,
also run by `make lint`), cover every core module, and fail on a forbidden import."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]


def test_the_core_contract_lists_every_core_module():
    core = set(contracts()[0]["source_modules"])
    found = {f"benchmark.{p.stem}" if p.is_file() else f"benchmark.{p.name}"
             for p in (ROOT / "benchmark").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert found - {"benchmark.app"} == core


def test_the_contracts_hold():
    out = subprocess.run([str(LINT), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("KEPT") == len(contracts())


def test_a_forbidden_import_breaks_them(tmp_path):
    """A copy of the code where the core imports tracking: lint-imports must say BROKEN."""
    import shutil

    for name in ("benchmark", "studies", "tracking"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    train = tmp_path / "benchmark" / "train.py"
    train.write_text(train.read_text() + "\nimport tracking.store  # noqa\n")
    out = subprocess.run([str(LINT), "--no-cache"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout + out.stderr
    assert "benchmark.train -> tracking.store" in out.stdout
