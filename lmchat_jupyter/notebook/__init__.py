"""Kernel glue: one KernelChats per kernel, busy status, cell text and its interpolation, replay, forks.

No IPython display or widgets here: those are ui/.
"""
