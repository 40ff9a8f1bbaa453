"""The repository layout maps to one import package, and the built wheel ships all of it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = {"tests", "build", "bench", "scripts", "docs", ".venv", ".git"}


def source_packages() -> dict[str, Path]:
    """edgescale.<name> -> folder, for every top-level folder with an __init__.py."""
    out = {"edgescale": ROOT / "core"}
    for init in sorted(ROOT.glob("*/__init__.py")):
        folder = init.parent
        if folder.name not in NOT_SHIPPED and folder.name != "core":
            out[f"edgescale.{folder.name}"] = folder
    return out


def test_pyproject_maps_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {name: ROOT / path for name, path in config["package-dir"].items()}
    assert mapping == source_packages()
    assert sorted(config["packages"]) == sorted(mapping)


@pytest.mark.timeout(900)  # the wheel build is allowed 600 s
def test_the_built_wheel_holds_every_module(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("edgescale-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {"edgescale/py.typed"}
    for package, folder in source_packages().items():
        prefix = package.replace(".", "/")
        expected |= {f"{prefix}/{py.name}" for py in folder.glob("*.py")}
    assert expected - shipped == set()
