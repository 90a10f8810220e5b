"""Conversations on a model: turns, context, the KV cache, models, autosave.

Imports core and backends only: nothing of notebooks, storage or IPython.
"""
