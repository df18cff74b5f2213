"""Setuptools hook for one optional build step; the metadata lives in pyproject.toml.

``BREAKWATER_COMPILE=1`` compiles the sidecar's hot path (``[tool.breakwater.compile]`` in
pyproject.toml) with mypyc into C extensions that sit beside the same modules' sources: Python
imports the extension first. It needs mypy, a C compiler and the Python headers in the build
environment (``pip wheel --no-build-isolation``); the image's build stage has them. Without the
variable the wheel is pure Python, as every editable install is: the same code, interpreted.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def compiled_extensions() -> list[object]:
    if os.environ.get("BREAKWATER_COMPILE", "0") != "1":
        return []
    from mypyc.build import mypycify  # only a compiling build has mypy installed

    config = tomllib.loads((HERE / "pyproject.toml").read_text())
    modules = config["tool"]["breakwater"]["compile"]["modules"]
    paths = [f"operator/{name.replace('.', '/')}.py" for name in modules]
    # The project's own mypy configuration (strict, the pydantic plugin, mypy_path = operator).
    return list(mypycify(["--config-file", str(HERE / "pyproject.toml"), *paths], opt_level="3"))


setup(ext_modules=compiled_extensions())
