"""What the notebook says about a conversation: which one `current()` is, and advice a notebook user can follow."""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell

import lmchat_jupyter
from lmchat_jupyter import Model
from lmchat_jupyter.notebook import kernel


def test_current_follows_chat_use(shell: InteractiveShell) -> None:
    shell.run_line_magic("chat", "use notes")
    store = kernel.chats().store
    assert lmchat_jupyter.current() is store.get("notes")
    assert lmchat_jupyter.current("default") is store.get("default")


def test_too_long_a_conversation_is_told_what_a_notebook_can_do(model: Model) -> None:
    said = str(model.context_overflow(model.n_ctx + 1))
    for advice in ("%chat config --n-ctx N", "%chat rewind N", "%chat fork --at TURN"):
        assert advice in said, said
    assert said.index("%chat") < said.index("context_policy")  # the notebook's way first
