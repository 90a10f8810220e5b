"""Hostile sidecar folders, as a cloned repository, a zip file or a shared drive can bring them.

Each case puts one thing where lmchat expects one of its files (the folder itself, the lock file,
a history, a session, a temp file): links to the user's files and folders and to devices, links
that lead nowhere, FIFOs, device nodes, folders where files belong, files where the folder belongs,
sparse files of 10 GB, hard links, and names that differ only by Unicode form. A *victim* folder
outside every sidecar holds the files the links point at; nothing in it may change.

``expect`` is what the user must be told (a fragment of the message, which must also name the
file); None where nothing needs saying (a stale temp file is simply removed).
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmchat_jupyter import ChatHistory, Message

__all__ = ["HostileCase", "all_cases", "make_victim", "put_hostile", "snapshot", "QUICK", "GIB"]

GIB = 1024**3
SIDECAR = "{sidecar}"  # in ``file``: the name of the sidecar folder itself
TEMP_NAME = ".default.lmsession.4242.4242.deadbeef.lmchat-tmp"
Build = Callable[[Path, Path], None]  # (sidecar folder, victim folder)


@dataclass(frozen=True)
class HostileCase:
    name: str
    build: Build
    expect: str | None  # a fragment of the message the user must get
    file: str | None  # the file name that message must contain


def make_victim(victim: Path, session: bytes) -> None:
    """The user's own files, outside every sidecar: what hostile links point at."""
    (victim / "dir").mkdir(parents=True)
    (victim / "notes.txt").write_text("precious\n")
    (victim / "dir" / "inside.txt").write_text("also precious\n")
    (victim / "outside.lmsession").write_bytes(session)
    history_of_two().save(victim / "outside.history.json")


def history_of_two(text: str = "Hello.") -> ChatHistory:
    return ChatHistory([Message("user", text), Message("assistant", "Hi.")])


def snapshot(root: Path, skip: Callable[[Path], bool]) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (links not followed): kind, size, mtime and content digest."""
    seen: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not skip(here / d)]
        for name in dirs + files:
            path = here / name
            info = os.lstat(path)
            digest = ""
            if stat.S_ISREG(info.st_mode) and info.st_size < 1 << 20:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                digest = os.readlink(path)
            seen[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns, digest)
    return seen


# --- what can stand in a file's place -------------------------------------------------------------


def put_hostile(path: Path, kind: str, victim: Path, valid: bytes = b"") -> None:
    """Put ``kind`` at ``path`` (the parent exists); links outside point into ``victim``."""
    links = {
        "link to a victim file": victim / "notes.txt",
        "link to a victim folder": victim / "dir",
        "link to a valid file outside": victim / ("outside" + "".join(path.suffixes[-2:])),
        "link to /dev/zero": Path("/dev/zero"),
        "link to /dev/null": Path("/dev/null"),
        "link to itself": path,
        "dangling link": path.parent / "nowhere",
    }
    if kind in links:
        path.symlink_to(links[kind])
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "character device":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # what /dev/zero is
    elif kind == "folder":
        path.mkdir()
        (path / "inside.txt").write_text("a folder where a file belongs\n")
    elif kind == "sparse 10 GB file":
        with path.open("wb") as fh:
            fh.write(valid)
            fh.truncate(10 * GIB)
    elif kind == "hard link to a victim file":
        os.link(victim / "notes.txt", path)
    elif kind == "a file":
        path.write_text("not a folder\n")
    else:
        raise ValueError(kind)


def can_make_devices(scratch: Path) -> bool:
    try:
        os.mknod(scratch / "probe", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except OSError:
        return False
    (scratch / "probe").unlink()
    return True


FILE_KINDS = {
    "link to a victim file": "it is a symbolic link",
    "link to a victim folder": "it is a symbolic link",
    "link to a valid file outside": "it is a symbolic link",
    "link to /dev/zero": "it is a symbolic link",
    "link to /dev/null": "it is a symbolic link",
    "link to itself": "it is a symbolic link",
    "dangling link": "it is a symbolic link",
    "FIFO": "it is a FIFO",
    "character device": "it is a character device",
    "folder": "it is a folder",
    "sparse 10 GB file": "",  # depends on the file: see below
    "hard link to a victim file": "",
}
FOLDER_KINDS = {
    "link to a victim folder": "is a symbolic link, not a folder",
    "link to /dev/null": "is a symbolic link, not a folder",
    "dangling link": "is a symbolic link, not a folder",
    "a file": "is a file, not a folder",
    "FIFO": "is a FIFO (named pipe), not a folder",
    "sparse 10 GB file": "is a file, not a folder",
}


def _file_case(
    target: str, file: str, kind: str, expect: str | None, *, valid: bytes = b"", extra: Build | None = None
) -> HostileCase:
    def build(sidecar: Path, victim: Path) -> None:
        sidecar.mkdir()
        if extra is not None:
            extra(sidecar, victim)
        put_hostile(sidecar / file, kind, victim, valid)

    return HostileCase(f"{target}: {kind}", build, expect, file if expect else None)


def _with_history(sidecar: Path, victim: Path) -> None:
    history_of_two().save(sidecar / "default.history.json")


def all_cases(session: bytes, *, devices: bool) -> list[HostileCase]:
    """Every hostile folder, in a fixed order."""
    cases: list[HostileCase] = []
    for kind, expect in FOLDER_KINDS.items():

        def build(sidecar: Path, victim: Path, kind: str = kind) -> None:
            put_hostile(sidecar, kind, victim)

        cases.append(HostileCase(f"folder: {kind}", build, expect, SIDECAR))
    file_kinds = [k for k in FILE_KINDS if devices or k != "character device"]
    for kind in file_kinds:
        lock_expect: str | None = FILE_KINDS[kind]
        if kind == "sparse 10 GB file":
            lock_expect = None  # a regular file of its own: usable as the lock (and emptied)
        elif kind == "hard link to a victim file":
            lock_expect = "names (hard links)"
        cases.append(_file_case("lock", ".lock", kind, lock_expect))
    for kind in file_kinds:
        expect: str | None = FILE_KINDS[kind]
        if kind == "sparse 10 GB file":
            expect = "bytes, more than the"
        elif kind == "hard link to a victim file":
            expect = "not valid UTF-8 JSON"  # a plain file of the right size: read, and refused as JSON
        cases.append(_file_case("history", "default.history.json", kind, expect))
        cases.append(_file_case("other history", "notes.history.json", kind, expect))
    for kind in file_kinds:
        expect = FILE_KINDS[kind]
        if kind == "sparse 10 GB file":
            expect = "after the end of its last section"  # a whole session, then 10 GB of zeros
        elif kind == "hard link to a victim file":
            expect = "not a usable lmchat session"  # the victim file: too short for a header
        cases.append(_file_case("session", "default.lmsession", kind, expect, valid=session, extra=_with_history))
    zeros = _file_case("session", "default.lmsession", "sparse 10 GB file", "lmchat session signature")
    cases.append(HostileCase("session: sparse 10 GB file of zeros", zeros.build, zeros.expect, zeros.file))
    for kind in ("link to a victim file", "link to a victim folder", "FIFO", "folder", "hard link to a victim file"):
        cases.append(_file_case("temp file", TEMP_NAME, kind, None))
    cases.extend(_unicode_cases())
    cases.append(HostileCase("everything at once", _everything, "symbolic link", ".lock"))
    return cases


def _unicode_cases() -> list[HostileCase]:
    nfc, nfd = "café", unicodedata.normalize("NFD", "café")

    def both(sidecar: Path, victim: Path) -> None:
        sidecar.mkdir()
        history_of_two("NFC").save(sidecar / f"{nfc}.history.json")
        history_of_two("NFD").save(sidecar / f"{nfd}.history.json")

    def nfd_only(sidecar: Path, victim: Path) -> None:
        sidecar.mkdir()
        history_of_two("NFD").save(sidecar / f"{nfd}.history.json")

    return [
        HostileCase("names: café in NFC and NFD", both, "Unicode form", f"{nfd}.history.json"),
        HostileCase("names: café in NFD only", nfd_only, "Unicode form", f"{nfd}.history.json"),
    ]


def _everything(sidecar: Path, victim: Path) -> None:
    sidecar.mkdir()
    put_hostile(sidecar / ".lock", "link to a victim file", victim)
    put_hostile(sidecar / "default.history.json", "link to /dev/zero", victim)
    put_hostile(sidecar / "default.lmsession", "FIFO", victim)
    put_hostile(sidecar / "notes.history.json", "link to a victim folder", victim)
    put_hostile(sidecar / "other.lmsession", "dangling link", victim)
    put_hostile(sidecar / TEMP_NAME, "link to a victim file", victim)


#: The quick variant's cases: every place at least once, every kind at least once.
QUICK = (
    "folder: link to a victim folder",
    "folder: a file",
    "lock: link to a victim file",
    "lock: FIFO",
    "lock: hard link to a victim file",
    "lock: character device",
    "history: link to /dev/zero",
    "history: FIFO",
    "history: sparse 10 GB file",
    "history: link to a valid file outside",
    "session: link to a valid file outside",
    "session: FIFO",
    "session: sparse 10 GB file",
    "session: character device",
    "temp file: link to a victim file",
    "names: café in NFC and NFD",
    "everything at once",
)
