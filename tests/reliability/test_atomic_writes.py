"""Two writers of one file at once, in one process: the background autosave and an explicit save.

Each write has its own temp file, so the file ends up as one writer's whole content, never a mix.
When both wrote into one temp name, the second truncated and renamed the file the first was still
writing into: the first's remaining bytes landed in the renamed file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from lmchat_jupyter.core.atomic import TEMP_SUFFIX, atomic_write
from lmchat_jupyter.core.errors import StorageError


def test_two_writers_of_one_file_never_mix(tmp_path: Path) -> None:
    path = tmp_path / "chat.lmsession"
    first_half_written = threading.Event()
    second_done = threading.Event()
    errors: list[BaseException] = []

    def slow_chunks() -> Iterator[bytes]:
        yield b"A" * 4096
        first_half_written.set()
        assert second_done.wait(30)
        yield b"A" * 4096

    def first_writer() -> None:
        try:
            atomic_write(path, slow_chunks())
        except StorageError as exc:  # the old behaviour: its temp file was renamed away under it
            errors.append(exc)

    writer = threading.Thread(target=first_writer)
    writer.start()
    assert first_half_written.wait(30)
    atomic_write(path, [b"B" * 6000])  # the explicit save, while the autosave is halfway
    second_done.set()
    writer.join(30)
    content = path.read_bytes()
    assert content in (b"A" * 8192, b"B" * 6000), f"a mix: {content.count(b'A')} A and {content.count(b'B')} B"
    assert errors == []
    assert not list(tmp_path.glob(f".*{TEMP_SUFFIX}"))
