"""The wheel `pip install .` builds (the image in docker-compose.yml installs it so) holds every
module and schema of the tree, and builds without a packaging warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("taskd", "bridge", "taskcli", "tasks", "schemas")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    # Built from a copy: a build in the tree leaves build/ there, which the next build reuses.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=out,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("taskd-*.whl")
    return zipfile.ZipFile(wheel).namelist(), done.stderr


def test_every_module_and_schema_is_in_the_wheel(built: tuple[list[str], str]) -> None:
    names, _ = built
    wanted = [
        str(p.relative_to(REPO))
        for package in PACKAGES
        for pattern in ("*.py", "*.schema.json", "*.html")
        for p in (REPO / package).rglob(pattern)
        if "__pycache__" not in p.parts
    ]
    assert wanted and sorted(set(wanted) - set(names)) == []


def test_the_wheel_builds_without_a_packaging_warning(built: tuple[list[str], str]) -> None:
    _, stderr = built
    assert "Warning" not in stderr, stderr


def test_the_image_copies_every_package() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for package in PACKAGES:
        assert f"COPY {package} {package}\n" in dockerfile, package
