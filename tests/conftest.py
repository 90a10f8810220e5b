"""Shared fixtures: the real models (embedded SmolLM2, Gemma 3 270M) and an isolated lmchat cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lmchat_jupyter import Model, load_model
from lmchat_jupyter.backends.specs import default_model_path

from .models_on_disk import gemma_path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run the long reliability variants")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --long")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["LMCHAT_CACHE_DIR"] = str(tmp_path_factory.mktemp("lmchat-cache"))
    # This run's own signing secret, shared with the kernels it starts (they inherit the environment).
    os.environ["LMCHAT_SECRET_FILE"] = str(tmp_path_factory.mktemp("lmchat-secret") / "secret")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def gemma_file() -> Path:
    return gemma_path()


@pytest.fixture(scope="session")
def model() -> Model:
    """The embedded default model, loaded once for the whole run (as a kernel would)."""
    return load_model(n_ctx=4096)


@pytest.fixture(scope="session")
def gemma(gemma_file: Path) -> Model:
    return load_model(gemma_file, n_ctx=4096)


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """IPython with ``%load_ext lmchat`` for ``notes.ipynb`` in a temporary folder; the names a test defines go after."""
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "notes.ipynb"))
    monkeypatch.chdir(tmp_path)
    ip = InteractiveShell.instance()
    before = set(ip.user_ns)
    ip.run_line_magic("load_ext", "lmchat")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "lmchat")
        for name in set(ip.user_ns) - before:
            del ip.user_ns[name]
