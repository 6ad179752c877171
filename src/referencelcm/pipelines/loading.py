"""Check a pipeline folder before diffusers loads it, so that a broken folder is reported by component and file.

diffusers' own errors for a damaged folder name neither the component nor what is wrong with it (``OSError: Error no
file named config.json found in directory DIR``, or a traceback from deep inside safetensors).
:func:`check_pipeline_folder` reads only ``model_index.json``, the components' JSON files and the safetensors headers,
so it is cheap enough to run before every load.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Sequence

INDEX_FILE = "model_index.json"
CONFIG_FILES = ("config.json", "scheduler_config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SAFETENSORS_LENGTH_BYTES = 8


def check_pipeline_folder(folder: str | os.PathLike, argument: str, components: Sequence[str]) -> dict[str, Any]:
    """Raise a clear error for a pipeline folder diffusers could not load; return its parsed ``model_index.json``.

    Checked: ``model_index.json`` exists and is a JSON object; it lists every name in ``components`` as
    ``[library, class]``, and that class can be imported; every component folder exists, holds a config
    (``config.json``, ``scheduler_config.json`` or ``preprocessor_config.json``) and only valid JSON files; a model
    component (one with ``config.json``) holds a weights file; every ``*.safetensors`` file is complete (its header
    parses and its size matches the tensors it declares).

    Args:
        folder: the pipeline folder.
        argument: the argument or flag the folder came from, named first in every error (``"--model"``).
        components: the component names the pipeline class needs (``vae``, ``denoising_unet``, ...).

    Raises:
        FileNotFoundError: the folder, ``model_index.json``, a component folder, its config or its weights are missing.
        ValueError: a JSON file does not parse, a component entry or class is unknown, a weights file is truncated.
    """
    folder = Path(folder)
    where = f"{argument} {folder}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: not a folder.")
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{where}: no {INDEX_FILE}, so it is not a pipeline folder.")
    index = _read_json(index_path, where)
    if not isinstance(index, dict):
        raise ValueError(f"{where}: {INDEX_FILE} must hold a JSON object, got {type(index).__name__}.")
    for name in components:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            raise ValueError(
                f"{where}: component {name!r}: {INDEX_FILE} must list it as [library, class], got {entry!r}."
            )
        _check_class(entry, f"{where}: component {name!r}")
        check_component_folder(folder / name, f"{where}: component {name!r}")
    return index


def loaded_components(pipeline_class: type, overrides: dict[str, Any]) -> list[str]:
    """The component folders ``pipeline_class.from_pretrained(folder, **overrides)`` reads: the modules its
    ``__init__`` takes, less those passed in ``overrides``."""
    return [name for name in pipeline_class._get_signature_keys(pipeline_class)[0] if name not in overrides]


def _read_json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: {path} is not valid JSON ({error}).") from error


def _check_class(entry: list[str], where: str) -> None:
    library, class_name = entry
    try:
        module = importlib.import_module(library)
    except ImportError as error:
        raise ValueError(f"{where}: its library {library!r} cannot be imported ({error}).") from error
    if getattr(module, class_name, None) is None:
        version = getattr(module, "__version__", "")
        raise ValueError(
            f"{where}: {library} {version} has no class {class_name!r}; the folder was saved with another version "
            f"of {library}."
        )


def check_component_folder(path: Path, where: str) -> None:
    """One component's folder (``vae/``, a standalone model folder): a config, valid JSON, complete weights.

    ``where`` starts every error message (e.g. ``"--vae DIR"``).
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{where}: its folder {path} is missing.")
    if not any((path / name).is_file() for name in CONFIG_FILES):
        raise FileNotFoundError(f"{where}: {path} holds none of {list(CONFIG_FILES)}.")
    for json_path in sorted(path.glob("*.json")):
        _read_json(json_path, where)
    weights = [entry for entry in sorted(path.iterdir()) if entry.name.endswith(WEIGHT_SUFFIXES)]
    if (path / "config.json").is_file() and not weights:
        raise FileNotFoundError(f"{where}: {path} holds no weights file (*.safetensors or *.bin).")
    for weights_path in weights:
        if weights_path.suffix == ".safetensors":
            _check_safetensors(weights_path, where)


def _check_safetensors(path: Path, where: str) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes the header lays out."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(_SAFETENSORS_LENGTH_BYTES)
        header_length = struct.unpack("<Q", prefix)[0] if len(prefix) == _SAFETENSORS_LENGTH_BYTES else None
        if header_length is None or _SAFETENSORS_LENGTH_BYTES + header_length > size:
            raise ValueError(f"{where}: {path} is truncated or not a safetensors file ({size} bytes, too short for "
                             "its header).")
        header_bytes = handle.read(header_length)
    try:
        header = json.loads(header_bytes)
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise ValueError(f"{where}: {path} is not a safetensors file (its header does not parse: {error}).") from error
    expected = _SAFETENSORS_LENGTH_BYTES + header_length + max(ends, default=0)
    if size != expected:
        raise ValueError(f"{where}: {path} is truncated or damaged: {size} bytes, but its header lays out {expected}.")


def looks_like_local_path(path: str) -> bool:
    """Whether ``path`` is meant as a local path (it exists, starts with ``.``, ``/`` or ``~``, or has more than one
    ``/``) rather than a Hub repo id (``name`` or ``owner/name``)."""
    return os.path.exists(path) or path.startswith((".", os.sep, "~")) or path.count("/") > 1


def check_pipeline_argument(model: str | os.PathLike, argument: str, overrides: dict[str, Any] | None = None) -> None:
    """Check a ``--model``-like value before loading: a local folder with :func:`check_pipeline_folder`, a local path
    that does not exist is a ``FileNotFoundError``; a Hub repo id passes (it is checked once downloaded)."""
    from .pipeline_referencelcm import ReferenceLCMPipeline

    path = os.fspath(model)
    if os.path.isdir(path):
        check_pipeline_folder(path, argument, loaded_components(ReferenceLCMPipeline, overrides or {}))
    elif looks_like_local_path(path):
        raise FileNotFoundError(f"{argument} {path}: no such folder.")


def load_pipeline(model: str | os.PathLike, argument: str, **kwargs: Any):
    """``ReferenceLCMPipeline.from_pretrained(model, **kwargs)`` whose errors name ``argument`` (a flag: ``--model``).

    A local folder is checked with :func:`check_pipeline_argument` first; anything else is taken as a Hub repo id, and
    a failed download (offline, unknown repo) becomes a ``FileNotFoundError`` naming ``argument`` and ``model``.
    """
    from .pipeline_referencelcm import ReferenceLCMPipeline

    check_pipeline_argument(model, argument, kwargs)
    path = os.fspath(model)
    try:
        return ReferenceLCMPipeline.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        if os.path.isdir(path):  # checked above: whatever fails now is a real failure, not a bad argument
            raise
        raise FileNotFoundError(
            f"{argument} {path}: not a local folder, nor a Hub repo id that could be downloaded ({error})"
        ) from error
