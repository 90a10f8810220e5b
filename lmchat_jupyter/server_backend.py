"""A :class:`~lmchat_jupyter.backend.Backend` on llama.cpp's llama-server: the model runs on the server.

Evaluation is lazy: :meth:`~LlamaServerBackend.evaluate` only appends to the tokens kept here, and the
server reads them when an answer is asked for: the sampler's first call sends ONE streamed ``/completion``
with the whole token list, ``cache_prompt`` on and a slot chosen for the conversation, and then hands out
the streamed tokens one per call. The prompt is always the whole conversation and the server keeps only
the prefix its slot shares with it, so what a slot held before (another conversation, a stale file) costs
time, never correctness.

The KV state lives on the server. Exporting it saves the conversation's slot to a slot file on the server
(named from the conversation id and a secret of the user's own: :func:`server_slots.slot_file_name`) and
writes a small descriptor; importing a descriptor takes its tokens and restores the slot file into a slot
before the next answer (a refused restore only means the server reads the conversation again).
A save happens only while the slot is idle, no other request ran there since this conversation's answer,
and the server wrote this conversation's token count: otherwise the previous file, which holds an earlier
prefix, is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import interrupts
from .backend import ServerReport
from .chat_jinja import render_chat
from .errors import LmchatError, ServerError, SlotStorageError
from .llama_server_client import SLOT_FILE_NAME, LlamaServerClient, ServerProps
from .results import GenerationOptions
from .server_slots import SlotClaim, choose_slot, idle_slots, slot_file_name
from .server_stream import END, TokenStream

__all__ = ["LlamaServerBackend", "STATE_BYTES"]

log = logging.getLogger("lmchat")

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
    #: The token handed out last and not yet appended with :meth:`LlamaServerBackend.evaluate`.
    pending: int | None = None


class LlamaServerBackend:
    """The llama-server at ``client.url`` (its model and slot layout in ``props``) as a backend."""

    def __init__(self, client: LlamaServerClient, props: ServerProps, n_vocab: int) -> None:
        self.client = client
        self.props = props
        self._n_vocab = n_vocab
        self.label: str | None = None
        #: The tokens of the conversation held now: what the next completion sends.
        self.tokens: list[int] = []
        #: The server's last event of the newest finished completion (``timings``: ``prompt_n``, ``cache_n``).
        self.last_completion: dict[str, Any] = {}
        #: Why a saved slot could not be used or written, the last time that happened (None: it never did).
        self.notice: str | None = None
        self._report: ServerReport | None = None
        self._completion: _Completion | None = None
        self._last: tuple[int, bytes] | None = None
        self._claims: dict[str, SlotClaim] = {}  # conversation -> the slot that holds it and the request that ran there
        self._files: dict[
            str, tuple[str, int]
        ] = {}  # conversation -> slot file holding its newest saved prefix, tokens
        self._unsaved: dict[
            str, tuple[int, int]
        ] = {}  # conversation -> slot and token count of an answer not saved yet

    @classmethod
    def connect(cls, url: str, api_key: str | None = None) -> LlamaServerBackend:
        """The backend on the llama-server at ``url``; ServerError (a subclass saying why) when there is none."""
        client = LlamaServerClient(url, api_key)
        props = client.props()
        return cls(client, props, _vocabulary_size(client))

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def api_key(self) -> str | None:
        return self.client.http.api_key

    @api_key.setter
    def api_key(self, key: str | None) -> None:
        self.client.http.api_key = key

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

    def last_report(self) -> ServerReport | None:
        return self._report

    # --- text -----------------------------------------------------------------------------------

    def format_chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return render_chat(
                self.props.chat_template,
                messages,
                bos_token=self.props.bos_token,
                eos_token=self.props.eos_token,
                generation_prompt=generation_prompt,
            )
        except ValueError as exc:
            raise LmchatError(f"the chat template of {self.model_file} refused these messages: {exc}") from None

    def tokenize(self, text: str) -> list[int]:
        return self.client.tokenize(text) if text else []

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        if len(tokens) == 1 and self._last is not None and tokens[0] == self._last[0]:
            return self._last[1]  # the token just streamed: its text came with it
        return self.client.detokenize(tokens).encode("utf-8") if tokens else b""

    # --- the sequence ---------------------------------------------------------------------------

    def evaluate(self, tokens: Sequence[int]) -> None:
        completion = self._completion
        if completion is not None and completion.pending is not None and list(tokens) == [completion.pending]:
            completion.pending = None  # the engine keeps the token just sampled: the server holds it already
        else:
            self._settle()
        self.tokens.extend(tokens)

    def sampler(self, options: GenerationOptions) -> Callable[[], int]:
        self._settle()
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
                completion.pending = token
            return token

        return sample

    def is_end(self, token: int) -> bool:
        return token == END

    def cut(self, n_tokens: int) -> bool:
        self._settle()
        del self.tokens[n_tokens:]
        return True

    def clear(self) -> None:
        self._settle()
        self.tokens.clear()

    def top_logits(self, k: int) -> list[tuple[int, float]]:
        return []  # the logits stay on the server: restores are not checked against saved logits

    # --- state in and out -----------------------------------------------------------------------

    def state_size(self) -> int:
        return STATE_BYTES

    def export_state(self, buffer: bytearray | memoryview, offset: int = 0) -> int:
        """Save the slot of the conversation ``label`` where it holds an answer not saved yet, and write
        the descriptor of its newest slot file (slot file name, its token count, these tokens' hash)."""
        self._settle()
        label = self.label
        if label is not None and label in self._unsaved:
            self._save(label)
        file, n_saved = self._files.get(label, (None, 0)) if label is not None else (None, 0)
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
        self._settle()
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
        label = self.label
        if label is not None and isinstance(file, str) and SLOT_FILE_NAME.fullmatch(file) and isinstance(n_saved, int):
            if self._files.get(label, (None, 0))[0] != file:
                self._claims.pop(label, None)  # from another process or conversation: no slot holds it yet
            self._files[label] = (file, n_saved)
        return True

    # --- completions ----------------------------------------------------------------------------

    def _start(self, n_predict: int, sampling: dict[str, Any]) -> _Completion:
        label = self.label
        slot = self._take_slot(label)
        stream = self.client.stream_completion(self.tokens, id_slot=slot, n_predict=n_predict, **sampling)
        events = TokenStream(stream.events, self.url, self.tokenize)
        self._completion = _Completion(label, slot, events, n_predict)
        self._report = None
        if label is not None:
            self._claims.pop(label, None)
            self._unsaved.pop(label, None)
        return self._completion

    def _finished(self, completion: _Completion) -> None:
        """The answer is over: note where it is (the slot and the request that ran there) for its save."""
        self._completion = None
        final = completion.stream.final or {}
        self.last_completion = final
        timings = final.get("timings")
        prompt, cached = final.get("tokens_evaluated"), timings.get("cache_n") if isinstance(timings, dict) else None
        self._report = ServerReport(
            prompt_tokens=prompt if isinstance(prompt, int) else None,
            cached_tokens=cached if isinstance(cached, int) else None,
            finish_reason="length" if final.get("stop_type") == "limit" else "stop",
        )
        label, n_cached = completion.label, final.get("tokens_cached")
        if label is None or not isinstance(n_cached, int):
            return
        try:
            info = next((s for s in self.client.slots() if s.id == completion.slot), None)
        except ServerError:
            info = None
        if info is not None and not info.is_processing:
            self._claims[label] = SlotClaim(completion.slot, info.last_task)
            self._unsaved[label] = (completion.slot, n_cached)

    def _settle(self) -> None:
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
        if completion is not None:
            completion.stream.close()
            if completion.label is not None:
                self._claims.pop(completion.label, None)

    def _take_slot(self, label: str | None) -> int:
        """A slot for the next answer, with the conversation's slot file restored into it where needed."""
        slots = idle_slots(self.client)
        claim = self._claims.get(label) if label is not None else None
        key = label or "-"
        fallback = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % max(1, self.props.total_slots)
        slot, holds_it = choose_slot(slots, claim, fallback)
        saved = self._files.get(label) if label is not None else None
        if holds_it or saved is None or saved[1] == 0:
            return slot
        try:
            self.client.restore_slot(slot, saved[0])
        except SlotStorageError as exc:
            assert label is not None
            self._files.pop(label, None)
            self._tell(f"the saved slot could not be restored ({exc}); the server reads the conversation again")
        except ServerError as exc:
            self._tell(f"the saved slot was not restored in time ({exc}); the server reads the conversation again")
        return slot

    def _save(self, label: str) -> None:
        """Save the slot of ``label``'s last answer to its slot file, if the slot still holds it."""
        slot, n_cached = self._unsaved.pop(label)
        claim = self._claims.get(label)
        try:
            info = next((s for s in self.client.slots() if s.id == slot), None)
        except ServerError:
            return
        if info is None or info.is_processing or claim is None or info.last_task != claim.last_task:
            return  # another request ran there since: the previous file keeps an earlier prefix
        name = slot_file_name(label, self.url)
        try:
            saved = self.client.save_slot(slot, name)
        except SlotStorageError as exc:
            self._tell(f"the slot was not saved ({exc}); after a restart the server reads the conversation again")
            self._forget_file(label, name)
            return
        except ServerError:
            self._forget_file(label, name)  # a save that may still run later: the file is not trusted
            return
        if saved.n_tokens != n_cached:
            self._forget_file(label, name)  # the slot held another conversation by then
            return
        self._files[label] = (name, n_cached)

    def _forget_file(self, label: str, name: str) -> None:
        if self._files.get(label, (None, 0))[0] == name:
            del self._files[label]

    def _tell(self, notice: str) -> None:
        self.notice = notice
        log.warning("lmchat: %s", notice)


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


def _vocabulary_size(client: LlamaServerClient) -> int:
    """The model's vocabulary size from llama-server's ``/v1/models`` (``meta.n_vocab``)."""
    data = client.http.get_json("/v1/models")
    models = data.get("data") if isinstance(data, dict) else None
    meta = models[0].get("meta") if isinstance(models, list) and models and isinstance(models[0], dict) else None
    n_vocab = meta.get("n_vocab") if isinstance(meta, dict) else None
    if not isinstance(n_vocab, int) or n_vocab <= 0:
        raise ServerError(f"{client.url}/v1/models does not give the model's vocabulary size (meta.n_vocab)")
    return n_vocab
