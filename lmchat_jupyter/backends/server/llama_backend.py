"""A :class:`~lmchat_jupyter.backends.interface.Backend` on llama.cpp's llama-server: the model runs on the server.

Evaluation is lazy: :meth:`~LlamaServerBackend.evaluate` only appends to the tokens kept here, and the
server reads them when an answer is asked for: the sampler's first call sends ONE streamed ``/completion``
with the whole token list, ``cache_prompt`` on and a slot chosen for the conversation, and then hands out
the streamed tokens one per call. The prompt is always the whole conversation and the server keeps only
the prefix its slot shares with it, so what a slot held before (another conversation, a stale file) costs
time, never correctness.

The KV state lives on the server. Exporting it saves the conversation's slot to its slot file and writes a
small descriptor; importing a descriptor takes its tokens and restores the slot file into a slot before the
next answer. Which slot and file, and when a save is the conversation's own: :mod:`.slot_keeper`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...core import interrupts
from ...core.errors import LmchatError, ServerError
from ...core.results import GenerationOptions
from ..interface import Capabilities, Persistence, ServerReport
from .llama_client import SLOT_FILE_NAME, LlamaServerClient, ServerProps
from .sequence import ServerSequence
from .slot_keeper import SlotKeeper
from .stream import END, TokenStream

__all__ = ["LlamaServerBackend", "STATE_BYTES"]

#: The size of an exported state: a JSON descriptor padded with spaces (the KV bytes stay on the server).
STATE_BYTES = 1024
STATE_FORMAT = 1


@dataclass
class _Completion:
    """The streamed completion under way: its conversation, slot and tokens."""

    label: str | None
    slot: int
    stream: TokenStream
    n_predict: int


class LlamaServerBackend(ServerSequence):
    """The llama-server at ``client.url`` (its model and slot layout in ``props``) as a backend."""

    capabilities = Capabilities(Persistence.SERVER_SLOT, evaluates_here=False)

    END = END

    def __init__(self, client: LlamaServerClient, props: ServerProps, n_vocab: int) -> None:
        super().__init__(client.http)
        self.client = client
        self.props = props
        self._n_vocab = n_vocab
        #: The server's last event of the newest finished completion (``timings``: ``prompt_n``, ``cache_n``).
        self.last_completion: dict[str, Any] = {}
        self.slot_keeper = SlotKeeper(client, props.total_slots, self._tell)
        self._completion: _Completion | None = None
        self._last: tuple[int, bytes] | None = None

    @classmethod
    def connect(cls, url: str, api_key: str | None = None) -> LlamaServerBackend:
        """The backend on the llama-server at ``url``; ServerError (a subclass saying why) when there is none."""
        client = LlamaServerClient(url, api_key)
        props = client.props()
        return cls(client, props, client.n_vocab())

    @property
    def url(self) -> str:
        return self.client.url

    # --- facts ----------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.props.n_ctx_per_slot

    @property
    def n_batch(self) -> int:
        return self.props.n_ctx_per_slot  # evaluating only appends here: any number at once

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def model_file(self) -> str:
        """The server's model file name (``SmolLM2-135M-Instruct.Q4_1.gguf``)."""
        return self.props.model_path.replace("\\", "/").rsplit("/", 1)[-1]

    def describe(self) -> dict[str, Any]:
        return {
            "server": "llama-server",
            "url": self.url,
            "model_path": self.props.model_path,
            "n_ctx": self.props.n_ctx_per_slot,
            "n_vocab": self._n_vocab,
            "build_info": self.props.build_info,
            "chat_template_sha256": hashlib.sha256(self.props.chat_template.encode()).hexdigest(),
        }

    def persistence(self) -> str:
        return f"full sessions (llama-server at {self.url}: the KV cache is saved on the server after each answer)"

    # --- text -----------------------------------------------------------------------------------

    def format_chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        props = self.props
        try:
            formatter = _formatter(props.chat_template, props.eos_token, props.bos_token, generation_prompt)
            return str(formatter(messages=messages).prompt)
        except Exception as exc:
            raise LmchatError(f"the chat template of {self.model_file} refused these messages: {exc}") from None

    def tokenize(self, text: str) -> list[int]:
        return self.client.tokenize(text) if text else []

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        if len(tokens) == 1 and self._last is not None and tokens[0] == self._last[0]:
            return self._last[1]  # the token just streamed: its text came with it
        return self.client.detokenize(tokens).encode("utf-8") if tokens else b""

    # --- the answer -----------------------------------------------------------------------------

    def sampler(self, options: GenerationOptions) -> Callable[[], int]:
        self._end_answer()
        sampling = _sampling(options)

        def sample() -> int:
            completion = self._completion
            try:
                # Waiting for the server is most of an answer's time here: Ctrl-C ends the wait.
                with interrupts.released():
                    if completion is None:
                        completion = self._start(options.max_tokens, sampling)
                    token, text = completion.stream.next()
            except BaseException:
                self._abandon()
                raise
            self._last = (token, text)
            if token == END:
                self._finished(completion)
            else:
                self._handed = token
            return token

        return sample

    def _start(self, n_predict: int, sampling: dict[str, Any]) -> _Completion:
        label = self.label
        slot = self.slot_keeper.take(label)
        stream = self.client.stream_completion(self.tokens, id_slot=slot, n_predict=n_predict, **sampling)
        self._completion = _Completion(label, slot, TokenStream(stream.events, self.url, self.tokenize), n_predict)
        self._report = None
        return self._completion

    def _finished(self, completion: _Completion) -> None:
        """The answer is over: note where it is (the slot and the request that ran there) for its save."""
        self._completion = None
        self._handed = None
        final = completion.stream.final or {}
        self.last_completion = final
        timings = final.get("timings")
        prompt, cached = final.get("tokens_evaluated"), timings.get("cache_n") if isinstance(timings, dict) else None
        self._report = ServerReport(
            prompt_tokens=prompt if isinstance(prompt, int) else None,
            cached_tokens=cached if isinstance(cached, int) else None,
            finish_reason="length" if final.get("stop_type") == "limit" else "stop",
        )
        n_cached = final.get("tokens_cached")
        if isinstance(n_cached, int):
            self.slot_keeper.answered(completion.label, completion.slot, n_cached)

    def _end_answer(self) -> None:
        """End the completion under way: read it to its end where the server stops by itself (the answer
        reached its length), else close it, which stops the server (the answer was stopped)."""
        completion = self._completion
        if completion is None:
            return
        stream = completion.stream
        if stream.final is not None or stream.handed_out >= completion.n_predict:
            with contextlib.suppress(ServerError):  # the stream broke: nothing is known of the slot
                stream.drain()
            if stream.final is not None:
                self._finished(completion)
                return
        self._abandon()

    def _abandon(self) -> None:
        """The completion under way broke off (Ctrl-C, a lost server): close it, which stops the server;
        what its slot holds is not known, so it is neither claimed nor saved."""
        completion, self._completion = self._completion, None
        self._handed = None
        if completion is not None:
            completion.stream.close()
            self.slot_keeper.lost(completion.label)

    # --- state in and out -----------------------------------------------------------------------

    def state_size(self) -> int:
        return STATE_BYTES

    def export_state(self, buffer: bytearray | memoryview, offset: int = 0) -> int:
        """Save the slot of the conversation ``label`` where it holds an answer not saved yet, and write
        the descriptor of its newest slot file (slot file name, its token count, these tokens' hash)."""
        self._end_answer()
        self.slot_keeper.save(self.label)
        file, n_saved = self.slot_keeper.slot_file(self.label)
        descriptor = {
            "format": STATE_FORMAT,
            "url": self.url,
            "slot_file": file,
            "n_slot_tokens": n_saved,
            "tokens_sha256": _tokens_hash(self.tokens),
        }
        data = json.dumps(descriptor).encode().ljust(STATE_BYTES)
        view = memoryview(buffer)
        view[offset : offset + len(data)] = data
        return len(data)

    def import_state(self, data: bytes | memoryview, tokens: Sequence[int]) -> bool:
        """Take ``tokens`` from a descriptor exported for them on this server; its slot file is restored
        into a slot before the next answer. False (nothing taken) for another server or other tokens."""
        self._end_answer()
        try:
            descriptor = json.loads(bytes(data).rstrip(b" \0"))
        except (UnicodeDecodeError, ValueError):
            return False
        if (
            not isinstance(descriptor, dict)
            or descriptor.get("format") != STATE_FORMAT
            or descriptor.get("url") != self.url
            or descriptor.get("tokens_sha256") != _tokens_hash(tokens)
        ):
            return False
        self.tokens = list(tokens)
        file, n_saved = descriptor.get("slot_file"), descriptor.get("n_slot_tokens")
        if (
            self.label is not None
            and isinstance(file, str)
            and SLOT_FILE_NAME.fullmatch(file)
            and isinstance(n_saved, int)
        ):
            self.slot_keeper.adopt(self.label, file, n_saved)
        return True


@functools.lru_cache(maxsize=16)
def _formatter(template: str, eos: str, bos: str, generation_prompt: bool) -> Callable[..., Any]:
    """llama-cpp-python's own renderer of chat templates, so a conversation renders the same whether its model
    runs in the kernel or on a server (llama-server's ``/apply-template`` renders a conversation that ends
    with an answer as one to continue, without its end of turn). llama_cpp loads here, at the first render,
    after the environment it reads (``local/_env``); compiling takes tens of milliseconds, so it is shared."""
    from .. import local  # noqa: F401  (first: it sets what llama.cpp reads when llama_cpp loads)

    # isort: split
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template, eos, bos, generation_prompt)


def _sampling(options: GenerationOptions) -> dict[str, Any]:
    values: dict[str, Any] = {
        "temperature": options.temperature,
        "top_k": options.top_k,
        "top_p": options.top_p,
        "min_p": options.min_p,
        "repeat_penalty": options.repeat_penalty,
    }
    if options.seed is not None:
        values["seed"] = options.seed
    return values


def _tokens_hash(tokens: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(tokens)).encode()).hexdigest()
