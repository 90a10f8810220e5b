"""What ``%%chat`` and ``%chat`` do: one module per subcommand family, ``registry.py`` the table of them all.

Every handler takes this kernel's ``KernelChats`` and its parsed arguments; bad arguments raise ``UsageError``.
"""
