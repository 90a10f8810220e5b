"""Reliability harnesses: damaged and foreign session files, interrupts, sliding-window restores.

Each harness has a quick variant that runs in every test run and a long one behind ``--long``.
"""
