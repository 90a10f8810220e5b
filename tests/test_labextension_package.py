"""The JupyterLab extension in labextension/ and the Python package ship as one version.

Reads files only: nothing here imports lmchat_jupyter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "labextension"
BUILT = ROOT / "lmchat_jupyter" / "labextension"
NAME = "lmchat-jupyter"


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def source_package() -> dict[str, Any]:
    package: dict[str, Any] = _json(SOURCE / "package.json")
    return package


def test_versions_match(pyproject: dict[str, Any], source_package: dict[str, Any]) -> None:
    assert source_package["name"] == NAME
    assert source_package["version"] == pyproject["project"]["version"], (
        "labextension/package.json and pyproject.toml must carry the same version"
    )


def test_build_layout_is_consistent(pyproject: dict[str, Any], source_package: dict[str, Any]) -> None:
    output_dir = (SOURCE / source_package["jupyterlab"]["outputDir"]).resolve()
    assert output_dir == BUILT
    shared = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["shared-data"]
    assert shared["lmchat_jupyter/labextension"] == f"share/jupyter/labextensions/{NAME}"
    assert shared["labextension/install.json"] == f"share/jupyter/labextensions/{NAME}/install.json"
    install = _json(SOURCE / "install.json")
    assert install["packageManager"] == "python"
    assert install["packageName"] == pyproject["project"]["name"]


def _check_built(directory: Path, version: str) -> None:
    built = _json(directory / "package.json")
    assert built["name"] == NAME
    assert built["version"] == version, (
        f"{directory} holds version {built['version']}, the sources {version}: rebuild "
        "(delete lmchat_jupyter/labextension and `pip install -e .` again)"
    )
    entry = built["jupyterlab"]["_build"]["load"]
    assert (directory / entry).is_file(), f"{directory / entry} missing"


def test_built_extension(source_package: dict[str, Any]) -> None:
    if not (BUILT / "package.json").exists():
        pytest.skip(
            "lmchat_jupyter/labextension is not built: `pip install -e .` builds it (needs Node.js), "
            "or run `jlpm install && jlpm build:prod` in labextension/"
        )
    _check_built(BUILT, source_package["version"])


def test_installed_extension(source_package: dict[str, Any]) -> None:
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / NAME
    if not (installed / "package.json").exists():
        pytest.skip(f"the extension is not installed in this environment ({installed})")
    _check_built(installed, source_package["version"])
    assert _json(installed / "install.json")["packageName"] == "lmchat-jupyter"
