"""What the repository ships (``models/``, ``assets/``) holds no absolute path of the machine that built it."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "models", REPO / "assets")
# "/a/b" at the start of a token (not inside a URL or a relative path), or a Windows drive path.
POSIX_PATH = re.compile(r"(?:^|[\s`'\"(=\[,])(/[\w.~-]+(?:/[\w.~-]*)+)")
WINDOWS_PATH = re.compile(r"\b[A-Za-z]:[\\/][\w.~-]")
TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml")


def _strings(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def absolute_paths_in(folder: Path) -> list[str]:
    """``"file: path"`` for every absolute path found in the text files and safetensors headers under ``folder``."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors":
            texts = list(_strings(_safetensors_header(path)))
        elif path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            texts = list(_strings(json.loads(text))) if path.suffix == ".json" else [text]
        else:
            continue
        for text in texts:
            found += [f"{path.relative_to(folder)}: {match}" for match in POSIX_PATH.findall(text)]
            found += [f"{path.relative_to(folder)}: {text}" for _ in WINDOWS_PATH.finditer(text)]
    return found


def test_shipped_models_and_assets_hold_no_absolute_paths():
    assert all(folder.is_dir() for folder in SHIPPED)
    for folder in SHIPPED:
        assert absolute_paths_in(folder) == [], folder


def test_the_check_finds_what_it_is_for(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "/work/main/build/vae", "url": "https://a/b"}))
    (tmp_path / "README.md").write_text("started from `/home/me/teacher`, see examples/train.py and https://x.y/z\n")
    (tmp_path / "meta.json").write_text(json.dumps({"source": "C:\\Users\\me\\data"}))
    found = absolute_paths_in(tmp_path)
    assert found == ["README.md: /home/me/teacher", "config.json: /work/main/build/vae",
                     "meta.json: C:\\Users\\me\\data"]


def test_exported_pipelines_carry_no_absolute_paths(tmp_path):
    from referencelcm import ReferenceLCMPipeline
    from referencelcm.training.export import portable_name, save_student_pipeline

    from .conftest import build_components

    source = tmp_path / "teacher"  # an absolute path, recorded as _name_or_path by from_pretrained
    ReferenceLCMPipeline(**build_components()).save_pretrained(source)
    pipe = ReferenceLCMPipeline.from_pretrained(source)
    assert pipe.vae.config._name_or_path == str(source / "vae")
    save_student_pipeline(pipe, tmp_path / "out", base_model=str(source),
                          description=f"student of `{portable_name(source)}`")
    assert absolute_paths_in(tmp_path / "out") == []
    assert "student of `teacher`" in (tmp_path / "out" / "README.md").read_text()
    assert portable_name("owner/repo") == "owner/repo"  # a Hub id stays as it is
