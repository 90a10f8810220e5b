"""The kernel↔labextension protocol: comm targets, format version and messages, all read from messages.schema.json.

The labextension's TypeScript types are generated from the same file; this module imports nothing else of lmchat.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any, Literal

__all__ = [
    "SCHEMA",
    "KERNEL_TARGET",
    "FRONTEND_TARGET",
    "FORMAT",
    "METADATA_KEY",
    "CHAT_WIDGET_MIME",
    "Sender",
    "Event",
    "validate",
    "validate_comm",
]

#: The schema itself (JSON Schema 2020-12); its ``$defs`` name each message.
SCHEMA: dict[str, Any] = json.loads(resources.files(__name__).joinpath("messages.schema.json").read_text("utf-8"))

Sender = Literal["kernel", "frontend"]
Event = Literal["open", "message"]


def _const(name: str) -> Any:
    return SCHEMA["$defs"][name]["const"]


#: Comm target the kernel registers at ``%load_ext lmchat``; the extension opens it with a hello.
KERNEL_TARGET: str = _const("KernelTarget")
#: Comm target the extension registers; a kernel that loads lmchat late opens it to ask for a hello.
FRONTEND_TARGET: str = _const("FrontendTarget")
#: Version of the messages and of the notebook metadata they carry.
FORMAT: int = _const("Format")
#: The notebook metadata key that holds the chat history.
METADATA_KEY: str = _const("MetadataKey")
#: Mime type of the marker in a chat widget's output, by which the extension finds a previous kernel's widgets.
CHAT_WIDGET_MIME: str = _const("ChatWidgetMime")


def validate(definition: str, data: object, *, closed: bool = False) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``data`` is a valid ``definition`` (a name in ``$defs``).

    Receivers ignore properties the schema does not name; with ``closed`` they are errors too, so that a
    sender's test finds a property it sends without the schema saying so. Needs the ``jsonschema`` package
    (a test dependency: the kernel itself never validates).
    """
    if definition not in SCHEMA["$defs"]:
        raise KeyError(f"the protocol defines no {definition!r}; it defines {', '.join(sorted(SCHEMA['$defs']))}")
    _validator(closed).validate(data, {"$ref": f"#/$defs/{definition}"})


def validate_comm(target: str, sender: Sender, event: Event, data: object, *, closed: bool = False) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``sender`` may send ``data`` on a comm of ``target``.

    ``event`` is ``open`` for the data that opens the comm, ``message`` for a message on an open one.
    """
    _validator(closed).validate({"target": target, "sender": sender, "event": event, "data": data})


@cache
def _validator(closed: bool) -> Any:
    from jsonschema import Draft202012Validator

    schema = _closed(copy.deepcopy(SCHEMA)) if closed else SCHEMA
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that lists its properties."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema and "oneOf" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _closed(value)
    elif isinstance(schema, list):
        for item in schema:
            _closed(item)
    return schema
