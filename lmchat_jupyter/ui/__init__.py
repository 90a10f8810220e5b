"""What a user touches: the %%chat and %chat magics, the widget, the panel channel, rendered answers.

The only layer that imports IPython and ipywidgets.
"""

from ..notebook import kernel as _kernel
from .progress import token_progress as _token_progress

# Whatever of the ui loads first, a kernel's long evaluations show as a bar from then on.
_kernel.show_progress_with(_token_progress)
