"""lmchat benchmarks: resume, restore I/O, save, size, memory and generation, against their baselines.

Run them all with ``python -m benchmarks.run`` (writes ``benchmarks/RESULTS.md`` and the plot);
``--smoke`` runs one short length on one model.
"""
