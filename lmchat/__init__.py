"""``%load_ext lmchat``: a short alias of :mod:`lmchat_jupyter`."""

from lmchat_jupyter import *  # noqa: F403
from lmchat_jupyter import __all__, __version__, load_ipython_extension, unload_ipython_extension  # noqa: F401
