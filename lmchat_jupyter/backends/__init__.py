"""Model runtimes behind one interface (interface.py: ``Backend`` and its ``Capabilities``), what a model
spec names (specs.py), and which backend serves it (registry.py).

local/ runs llama.cpp in this process (llama_cpp loads with the first local model); server/ talks to
llama-server and OpenAI-compatible endpoints.
"""
