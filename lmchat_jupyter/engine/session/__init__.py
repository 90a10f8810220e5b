"""The session file: its container and checksums, what a save writes (base, records), how it is read back.

No notebook here: a session is bytes or one file.
"""
