"""Checks of command-line values shared by ``referencelcm`` and the training scripts, run before anything is loaded
or written. Each raises ``ValueError`` / ``FileNotFoundError`` naming the flag, what was expected and what came in."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import PIL.Image
import torch

from .data.layout import open_image

# What an examples/ script reports in one line, without a traceback (docs/design.md §7): bad input, a NaN loss.
SCRIPT_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def check_at_least(flag: str, value: int | float | None, minimum: int | float) -> None:
    """``value >= minimum`` (``None``, meaning "not given", passes)."""
    if value is not None and not value >= minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}.")


def check_finite(flag: str, value: float | None) -> None:
    """A finite number (``None`` passes): rejects ``nan`` and ``inf``, which argparse's ``float`` accepts."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value}.")


def resolve_device(flag: str, name: str | None) -> torch.device:
    """The torch device ``name`` (default: ``cuda`` when available, else ``cpu``), checked to exist here."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"{flag} {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps): {error}") from error
    if device.type == "cpu":
        return device
    if device.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:
        backend = getattr(torch, device.type, None)
        available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
        count = backend.device_count() if available and hasattr(backend, "device_count") else 0
    if not available:
        without_cuda = " (built without CUDA)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise ValueError(f"{flag} {name}: no {device.type} device is available to torch {torch.__version__}"
                         f"{without_cuda}; use {flag} cpu.")
    if device.index is not None and device.index >= count:
        raise ValueError(f"{flag} {name}: there are only {count} {device.type} device(s) here (numbered from 0).")
    return device


def check_output_file(flag: str, path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """A file path that can be written: not a folder, the right suffix, and its nearest existing parent a writable
    folder (missing parents are created when writing)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; expected a file name{_suffix_hint(suffixes)}.")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: expected a file name{_suffix_hint(suffixes)}, got suffix {path.suffix!r}.")
    _check_parent_writable(flag, path)
    return path


def check_output_folder(flag: str, path: str | os.PathLike) -> Path:
    """A folder path that can be created or written into: not a file, its nearest existing parent a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file; expected a folder.")
    _check_parent_writable(flag, path)
    return path


def check_new_folder(flag: str, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """A folder to create: not a file nor under one, writable, and empty unless ``overwrite`` (then replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: expected a folder to create; a file is in the way.")
    check_output_folder(flag, path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"{flag} {path}: the folder is not empty; pass --overwrite to replace it.")
    return path


@contextlib.contextmanager
def atomic_output_dir(flag: str, path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder next to ``path`` (checked by :func:`check_new_folder`); on success it replaces ``path``
    by renaming, on any error it is removed and ``path`` is left as it was (with no parent folder created for it)."""
    path = check_new_folder(flag, path, overwrite)
    created = missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.writing-", dir=path.parent))
    try:
        yield staging
        previous = None
        if path.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{path.name}.replaced-", dir=path.parent))
            path.rename(previous / path.name)
        staging.rename(path)
        if previous is not None:
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(created if created is not None else staging, ignore_errors=True)
        raise


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says what to install (the CLI prints it as one line)."""


def _suffix_hint(suffixes: tuple[str, ...] | None) -> str:
    return f" ending in one of {list(suffixes)}" if suffixes else ""


def _check_parent_writable(flag: str, path: Path) -> None:
    existing = next(parent for parent in (path, *path.absolute().parents) if parent.exists())
    if existing == path:
        existing = path if path.is_dir() else path.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, so no folder can be created under it.")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"{flag} {path}: the folder {existing} is not writable.")


def temporary_file_beside(path: str | os.PathLike, suffix: str) -> str:
    """A new empty temporary file in ``path``'s folder, to be renamed onto ``path`` once complete (``os.replace``).

    ``tempfile.mkstemp`` creates it readable by its owner only; it gets the mode a plain ``open`` would have given
    (0666 less the umask), so the renamed output is as readable as any other file the user writes.
    """
    handle, temporary = tempfile.mkstemp(suffix=suffix, prefix=".tmp-", dir=Path(path).parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    return temporary


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a new temporary file beside ``path`` (ending in ``suffix``, default ``path``'s own) to write; it is
    renamed onto ``path`` when the block ends, and removed if the block raises: a run stopped mid-write leaves the
    previous file (or none), never half of one. Creates ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_file_beside(path, path.suffix if suffix is None else suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_image_atomically(image: PIL.Image.Image, path: str | os.PathLike, **save_kwargs) -> Path:
    """``image.save(path, **save_kwargs)`` through :func:`atomic_output`. Returns ``path``."""
    with atomic_output(path) as temporary:
        image.save(temporary, **save_kwargs)
    return Path(path)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) through :func:`atomic_output`: readers never see half a file."""
    with atomic_output(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")


def missing_parents(path: str | os.PathLike) -> Path | None:
    """The outermost missing ancestor folder of ``path`` (what writing ``path`` will create), or ``None``."""
    missing = None
    for parent in Path(path).absolute().parents:
        if parent.exists():
            break
        missing = parent
    return missing


@contextlib.contextmanager
def naming(flag: str, value: object) -> Iterator[None]:
    """Re-raise a ``ValueError`` / ``FileNotFoundError`` from the block with ``"{flag} {value}: "`` in front (the
    original as its cause), so an error from deep inside says which argument it is about."""
    try:
        yield
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{flag} {value}: {error}") from error


def read_image(flag: str, path: str | os.PathLike) -> PIL.Image.Image:
    """The image file at ``path`` fully decoded, as RGB; a missing, unreadable or truncated file names ``flag``."""
    try:
        return open_image(path)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"{flag} {error}") from error


def run_main(
    main: Callable[[], int | None], errors: tuple[type[BaseException], ...] = SCRIPT_ERRORS, status: int = 1
) -> NoReturn:
    """Run a script's ``main()`` and exit with what it returns (``None``: 0). One of ``errors`` is printed as the
    line ``error: <message>`` on stderr, without a traceback, and the exit status is ``status``."""
    try:
        code = main()
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(status)
    sys.exit(code)
