"""Tests of the scripts in examples/."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_example(path: Path) -> ModuleType:
    """An ``examples/`` script as a module (its ``main(argv)`` runs in-process: faster than a subprocess)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
