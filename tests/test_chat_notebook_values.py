"""%%chat with values and context from the notebook, through run_cell_magic and a real kernel, on the real model."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import lmchat_jupyter

from .kernel_driver import KernelDriver, notebook_file

CHAT = "--temperature 0 --max-tokens 8"


def chat(ip: InteractiveShell, message: str, line: str = CHAT, cell: str | None = None) -> tuple[str, list[str]]:
    """Run a %%chat cell (the notebook cell ``cell``): what it printed, and the text of what it displayed."""
    lmchat_jupyter.notebook.kernel.chats().cell_id = cell
    with capture_output() as out:
        ip.run_cell_magic("chat", line, message)
    return out.stdout, [o.data.get("text/markdown") or o.data.get("text/plain", "") for o in out.outputs]


def last_user() -> str:
    return [m.content for m in lmchat_jupyter.current().history if m.role == "user"][-1]


def user_count() -> int:
    return lmchat_jupyter.current().info.user_message_count


def test_values_go_in_and_the_history_keeps_what_the_model_received(shell: InteractiveShell) -> None:
    shell.user_ns["city"] = "Lisbon"
    printed, shown = chat(shell, "I travel to {city} ({len(city)} letters). Braces: {{literal}} {'k': 1}")
    assert last_user() == "I travel to Lisbon (6 letters). Braces: {literal} {'k': 1}"
    message = lmchat_jupyter.current().history[-2]
    assert message.meta["uses"] == "city"
    assert "lmchat:" not in printed
    added = shown[0]
    assert added.startswith("<details><summary>lmchat added 2 values · ") and " tokens</summary>" in added
    assert "I travel to Lisbon" in added
    # No values: no block, the message as typed.
    _, shown = chat(shell, "Thanks.")
    assert not any("<details>" in s for s in shown) and last_user() == "Thanks."


def test_rerun_with_the_same_values_replays_and_changed_values_rewind(shell: InteractiveShell) -> None:
    shell.user_ns["city"] = "Lisbon"
    chat(shell, "Tell me about {city}.", cell="c1")
    _, shown = chat(shell, "Tell me about {city}.", cell="c1")
    assert "not generated again" in shown[-1] and user_count() == 1
    shell.user_ns["city"] = "Porto"
    _, shown = chat(shell, "Tell me about {city}.", cell="c1")
    assert "not generated again" not in shown[-1]
    assert user_count() == 1 and last_user() == "Tell me about Porto."


def test_raw_sends_braces_as_typed(shell: InteractiveShell) -> None:
    shell.user_ns["city"] = "Lisbon"
    printed, shown = chat(shell, "Format strings look like {city} and {{x}}.", line=f"{CHAT} --raw")
    assert last_user() == "Format strings look like {city} and {{x}}." and "lmchat:" not in printed
    assert "uses" not in lmchat_jupyter.current().history[-2].meta


def test_edge_cases_missing_names_exceptions_huge_values_bytes_and_code(shell: InteractiveShell) -> None:
    shell.user_ns["big"] = "A" * 50_000 + "Z"
    shell.user_ns["blob"] = b"\x89PNG\xff\xfe"
    shell.user_ns["broken"] = {"a": 1}
    code = "def f(d):\n    return {k: v for k, v in d.items()}  # {not_a_name}\nint main() { return 0; }"
    printed, _ = chat(shell, f"{{big}}\n{{blob}}\n{{broken['zzz']}}\n{{nope}}\n{code}")
    sent = last_user()
    assert sent.startswith("AAAA") and "characters left out" in sent and len(sent) < 2500
    assert "b'\\x89PNG\\xff\\xfe'" in sent
    assert "{broken['zzz']}\n{nope}\n" + code in sent
    assert "{broken['zzz']} was sent as written (KeyError: 'zzz')" in printed
    assert "{nope} was sent as written (nope: not defined in this kernel)" in printed


def test_context_blocks_through_the_magic(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="no cell has raised an error"):
        chat(shell, "Why?", line=f"{CHAT} --context error")
    with pytest.raises(UsageError, match="cells:N"):
        chat(shell, "Why?", line=f"{CHAT} --context cells:x")
    shell.run_cell("answer = 6 * 7\nanswer", store_history=True)
    shell.run_cell("answer / 0", store_history=True)
    chat(shell, "Explain the error.", line=f"{CHAT} --context error")
    sent = last_user()
    assert sent.startswith("--- notebook context: the last error (In [")
    assert "answer / 0" in sent and "ZeroDivisionError" in sent and sent.endswith("Explain the error.")
    assert lmchat_jupyter.current().history[-2].meta["context"] == "error"
    chat(shell, "And these?", line=f"{CHAT} --context cells:2")
    assert "answer = 6 * 7" in last_user() and "42" in last_user()


def test_a_name_gone_after_a_restart_is_said_and_the_stored_answer_kept(shell: InteractiveShell) -> None:
    shell.user_ns["city"] = "Lisbon"
    chat(shell, "Tell me about {city}.", cell="c1")
    stored = lmchat_jupyter.current().history[-1].content
    del shell.user_ns["city"]  # the kernel restarted; the cell that defined it has not run again
    printed, shown = chat(shell, "Tell me about {city}.", cell="c1")
    assert "{city} cannot be filled in: this kernel does not have" in printed
    assert stored in shown[-1] and "not generated again" in shown[-1]
    assert user_count() == 1 and last_user() == "Tell me about Lisbon."


def test_in_a_real_kernel_err_and_a_restart(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "values.ipynb")
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        assert k.run("rows = [3, 1, 2]", cell_id="a").error is None
        failed = k.run("sorted(rows)[5]", cell_id="b")
        assert failed.error is not None and "IndexError" in failed.error
        n = k.value("len(In) - 2")
        run = k.run(f"%%chat {CHAT}\nWhy did this fail?\n{{Err[{n}]}}\nThe data: {{rows}}", cell_id="c")
        assert run.error is None, run.text
        sent = k.value("[m.content for m in __import__('lmchat_jupyter').current().history][-2]")
        assert "IndexError: list index out of range" in sent and "sorted(rows)[5]" in sent
        assert "\x1b" not in sent and sent.endswith("The data: [3, 1, 2]")
        assert "lmchat added 2 values" in run.displays[0]
        context = k.run(f"%%chat {CHAT} --context cells:4\nAnd now?", cell_id="d")
        assert context.error is None and "the last 4 code cells" in context.displays[0], context.text
        sent = k.value("[m.content for m in __import__('lmchat_jupyter').current().history][-2]")
        assert sent.startswith("--- notebook context: the last 4 code cells") and "rows = [3, 1, 2]" in sent
        assert "Error in [" in sent and "%%chat" not in sent and sent.endswith("And now?")
    finally:
        k.shutdown()
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        run = k.run(f"%%chat {CHAT}\nWhy did this fail?\n{{Err[{n}]}}\nThe data: {{rows}}", cell_id="c")
        assert f"{{Err[{n}]}}, {{rows}} cannot be filled in" in run.stdout, run.text
        assert "not generated again" in run.displays[-1]
        assert k.value("__import__('lmchat_jupyter').current().info.user_message_count") == 2
    finally:
        k.shutdown()
