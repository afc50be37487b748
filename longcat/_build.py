"""Build hook: ``pip install .`` / ``pip wheel .`` generate the gRPC stubs (``longcat/v1``) before packaging,
so an install needs no ``make protos``. Named in pyproject.toml ([tool.setuptools.cmdclass]); setuptools loads
this file on its own, so it imports nothing of the package but ``longcat/protos_build.py`` (by path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _protos_build():
    spec = importlib.util.spec_from_file_location("_longcat_protos_build", HERE / "protos_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """build_py that first runs the ``make protos`` recipe and packages its output as ``longcat.v1``."""

    def run(self):
        protos = _protos_build()
        if protos.proto_files():  # an sdist without protos/ carries the stubs it was built with
            protos.generate()
        if (HERE / "v1" / "__init__.py").exists() and "longcat.v1" not in self.packages:
            self.packages.append("longcat.v1")
        super().run()
