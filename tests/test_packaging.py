"""Every data file the packages read at run time ships in the wheel (pyproject ``package-data``).

A wheel built from a fresh clone was checked by hand once (the shipped checkpoint loads by name from
site-packages); this test keeps a new data file from being left out of ``package-data`` silently.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_non_python_file_of_a_package_is_package_data():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in setuptools["packages"]["find"]["include"]]
    patterns = setuptools["package-data"]
    data_files = [f for pkg in packages for f in (REPO / pkg).rglob("*")
                  if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts]
    assert any(f.name == "model.safetensors" for f in data_files)  # the shipped checkpoint is among them
    missing = []
    for f in data_files:
        pkg, rel = f.relative_to(REPO).parts[0], f.relative_to(REPO / f.relative_to(REPO).parts[0]).as_posix()
        if not any(fnmatch.fnmatch(rel, pat) for pat in patterns.get(pkg, [])):
            missing.append(f.relative_to(REPO).as_posix())
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml (a wheel would lack them): {missing}"
