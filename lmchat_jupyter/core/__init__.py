"""The ground floor: errors, events, histories, results, interrupts, fingerprints, signing, atomic writes.

Imports nothing else of lmchat, no model runtime, no IPython.
"""
