"""The physical floors lmchat is compared with: raw KV bytes to and from a file, with nothing else."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

import llama_cpp
import numpy as np

from lmchat_jupyter.backends.local.llama import SEQ, LlamaBackend

__all__ = ["write_raw_state", "floor_restore", "floor_write"]


def write_raw_state(backend: LlamaBackend, path: Path) -> int:
    """Write sequence 0's raw KV state (``llama_state_seq_get_data``) to ``path``; returns its size."""
    buf = bytearray(backend.state_size())
    n = backend.export_state(buf)
    with open(path, "wb") as fh:
        fh.write(memoryview(buf)[:n])
        fh.flush()
        os.fsync(fh.fileno())
    return n


def floor_restore(llm: llama_cpp.Llama, path: Path) -> float:
    """Seconds to ``mmap`` a raw state file, ``llama_state_seq_set_data`` from the map, and unmap it."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        array = np.frombuffer(mapped, dtype=np.uint8)
        read = llama_cpp.llama_state_seq_set_data(
            llm.ctx, array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, SEQ
        )
        del array  # the map cannot close while a view of it exists
    finally:
        mapped.close()  # unmapping is part of the cost: lmchat's restore pays it too
    elapsed = time.perf_counter() - start
    if read != size:
        raise RuntimeError(f"llama.cpp refused the raw state in {path} ({read} of {size} bytes)")
    return elapsed


def floor_write(path: Path, data: bytes | bytearray | memoryview) -> float:
    """Seconds to write ``data`` to a new file and fsync it."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start
