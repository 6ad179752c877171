"""Reading weight files that come from elsewhere (Champ's ``.pth``, SD1.5's ``.bin``, metric networks) safely.

``torch.save`` files are pickles, and unpickling runs whatever code the file names. Every ``.pth`` / ``.pt`` /
``.bin`` reader of this package goes through :func:`load_state_dict_file`, which reads them with
``torch.load(..., weights_only=True)``: tensors and plain containers only, never code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Mapping

import torch


def load_state_dict_file(path: str | os.PathLike, argument: str | None = None) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from a ``.safetensors`` file or a ``torch.save`` file, without running code.

    ``torch.save`` files are read with ``weights_only=True`` (memory-mapped when the format allows); a file whose
    pickle names anything but tensors and containers is refused. A checkpoint wrapping its weights as
    ``{"state_dict": {...}}`` is unwrapped.

    Args:
        path: the file.
        argument: the argument or flag the path came from, named in errors (e.g. ``"--champ-dir"``).

    Raises:
        ValueError: naming the file (and ``argument``) when it is not a readable weights file, holds objects other
            than tensors, or is not a mapping of names to tensors. The reader's own error is kept as the cause.
    """
    path = Path(path)
    where = f"{argument} {path}" if argument else str(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as error:
            raise ValueError(f"{where}: not a readable safetensors file, perhaps truncated ({error}).") from error
    try:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{where}: cannot be read with torch.load(weights_only=True), so it holds more than tensors; refusing to "
            f"unpickle arbitrary objects ({str(error).splitlines()[0]})."
        ) from error
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{where}: not a readable torch.save file, perhaps truncated ({error}).") from error
    if isinstance(state_dict, Mapping) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, Mapping) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(f"{where}: expected a state dict (name → tensor), got {type(state_dict).__name__}.")
    return dict(state_dict)
