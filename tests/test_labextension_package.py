"""The JupyterLab extension in labextension/ and the Python package ship as one version.

Reads files (and runs the extension's protocol check with Node.js): nothing here imports lmchat_jupyter.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

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


def _package(spec: str) -> str:
    parts = spec.split("/")
    return "/".join(parts[:2]) if spec.startswith("@") else parts[0]


def test_every_package_the_sources_import_is_a_dependency(source_package: dict[str, Any]) -> None:
    imports = re.compile(r"""^import\s[^'"]*?from\s+'([^'./][^']*)'""", re.MULTILINE)
    used = {_package(m) for ts in (SOURCE / "src").rglob("*.ts") for m in imports.findall(ts.read_text("utf-8"))}
    assert used, "no import found: the pattern no longer matches the sources"
    assert used - set(source_package["dependencies"]) == set()


def test_shared_react_components_accept_what_jupyterlab_ships(source_package: dict[str, Any]) -> None:
    """@jupyter/chat uses JupyterLab's @jupyter/react-components: the range the extension asks for takes it.

    The build asks for the range of @jupyterlab/core-meta, which lags behind JupyterLab's patch releases
    (4.6.4 asks for ^0.16.6; 4.6.6 ships 0.17.1), and the browser console warns of each mismatch.
    """
    spec = importlib.util.find_spec("jupyterlab")
    if spec is None or spec.origin is None:
        pytest.skip("JupyterLab is not installed")
    lock = (Path(spec.origin).parent / "staging" / "yarn.lock").read_text("utf-8")
    shipped = re.search(r'^"@jupyter/react-components@[^\n]*\n  version: (\S+)', lock, re.MULTILINE)
    assert shipped is not None
    shared = source_package["jupyterlab"]["sharedPackages"]["@jupyter/react-components"]
    assert shared["singleton"] and not shared["bundled"]
    assert SpecifierSet(shared["requiredVersion"].replace(" ", ",")).contains(shipped.group(1))


def test_the_extensions_protocol_is_generated_from_the_schema() -> None:
    """src/protocol/generated.ts is what lmchat_jupyter/protocol/messages.schema.json gives, and the check of
    incoming messages agrees with the schema's examples (``jlpm protocol:check``)."""
    node = shutil.which("node")
    if node is None or not (SOURCE / "node_modules" / "json-schema-to-typescript").is_dir():
        pytest.skip("needs Node.js and `jlpm install` in labextension/")
    done = subprocess.run(
        [node, "scripts/protocol.mjs", "--check"], cwd=SOURCE, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
