"""Which of Breakwater's loaded modules run compiled: mypyc's C extensions (setup.py) or bytecode.

The image compiles the hot path; an editable install runs the same sources interpreted. The sidecar
says which in its start line, so a profile or a bench can be read against the build it measured.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES

_EXTENSION_SUFFIXES = tuple(EXTENSION_SUFFIXES)
# The module every fast-path request runs: compiled or not, the hot path is.
_HOT_PATH_MODULE = "breakwater.proxy.fast.server"


def compiled_modules() -> list[str]:
    """The loaded ``breakwater`` modules that are C extensions, sorted."""
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith("breakwater.")
        and (getattr(module, "__file__", None) or "").endswith(_EXTENSION_SUFFIXES)
    )


def hot_path_build() -> str:
    """``compiled`` when the fast path's server runs as a C extension, else ``interpreted``."""
    return "compiled" if _HOT_PATH_MODULE in compiled_modules() else "interpreted"
