"""A notebook's conversations on disk: the store, its sidecar folder, space and caps, reconciling, metadata.

Below the kernel glue: no IPython, no widgets.
"""
