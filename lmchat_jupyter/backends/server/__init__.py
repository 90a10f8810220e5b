"""llama-server (full sessions through slot files) and OpenAI-compatible endpoints (history only).

``llama_backend`` / ``openai_backend`` are the backends, on what both share (``sequence``); ``slot_keeper`` and
``slots`` say which slot and slot file hold a conversation; ``probe`` tells which kind a server is; the
clients (``llama_client``, ``openai_client``, ``stream``) talk HTTP through ``http``, on httpx2.
"""
