"""Process settings llama.cpp reads once, when ``llama_cpp`` is first imported; imported before it.

llama.cpp's CPU threads meet at an OpenMP barrier after every operation, and libgomp's default is to
spin there. When another process holds a core, the spinning thread burns it while the thread it waits
for cannot run: on two cores with one other busy process, two threads generated 20x slower than one.
``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead, and two threads then evaluate a
prompt 1.7x faster than one. A value the user set wins.
"""

from __future__ import annotations

import os
import sys

_WAS_LOADED = "llama_cpp" in sys.modules
_USER_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def wait_policy_passive() -> bool:
    """Whether llama.cpp's OpenMP threads were told to sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``)."""
    # A llama_cpp imported before lmchat read the policy the environment had then: known only if the user set it.
    policy = _USER_POLICY if _WAS_LOADED else os.environ.get("OMP_WAIT_POLICY")
    return (policy or "").strip().upper() == "PASSIVE"
