"""Two versions of a conversation: which extends which, new names, and files moved aside."""

from __future__ import annotations

import os
from pathlib import Path

from lmchat_jupyter.core.history import ChatHistory, Message
from lmchat_jupyter.storage.reconcile import Relation, free_name, is_backup_name, length_note, move_aside, relation
from lmchat_jupyter.storage.sidecar import check_name


def history(*ids: str) -> ChatHistory:
    roles = ["user", "assistant"]
    return ChatHistory([Message(roles[i % 2], f"text {i}", id=m) for i, m in enumerate(ids)])


def test_relation_by_message_ids() -> None:
    assert relation(history("a", "b"), history("a", "b")) is Relation.SAME
    assert relation(history("a", "b", "c", "d"), history("a", "b")) is Relation.A_EXTENDS
    assert relation(history("a", "b"), history("a", "b", "c", "d")) is Relation.B_EXTENDS
    assert relation(history("a", "b", "c", "d"), history("a", "b", "x", "y")) is Relation.DIVERGED
    assert relation(history(), history("a", "b")) is Relation.B_EXTENDS


def test_free_names_are_valid_and_unused() -> None:
    assert free_name("default", [], "notebook") == "default-notebook"
    assert free_name("default", ["default-kernel", "default-kernel-2"], "kernel") == "default-kernel-3"
    long = "x" * 64
    name = free_name(long, [], "notebook")
    assert len(name) == 64 and name.endswith("-notebook") and check_name(name) == name
    assert check_name(free_name("ends with dots..", [], "kernel"))


def test_move_aside_renames_without_following_links(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "nb.lmchat"
    folder.mkdir()
    (folder / "default.history.json").write_text("{}")
    (folder / "default.lmsession").symlink_to(victim)
    kept = move_aside(folder, "default", [".lmsession", ".history.json"])
    assert kept is not None and is_backup_name(kept) and check_name(kept) == kept
    assert sorted(p.name for p in folder.iterdir()) == [f"{kept}.history.json", f"{kept}.lmsession"]
    assert os.path.islink(folder / f"{kept}.lmsession") and victim.read_text() == "keep me"
    # A second replacement in the same second gets a name of its own.
    (folder / "default.history.json").write_text("{}")
    again = move_aside(folder, "default", [".lmsession", ".history.json"])
    assert again is not None and again != kept
    assert move_aside(folder, "nothing", [".lmsession", ".history.json"]) is None


def test_length_note() -> None:
    assert length_note(history("a", "b")) == "2 messages, 12 characters"
    assert length_note(history("a")) == "1 message, 6 characters"
