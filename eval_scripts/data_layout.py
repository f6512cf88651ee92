"""Where InternVL's files are under ``--data-root``: its ``internvl_chat`` folder, or that folder's ``data/``.

InternVL's evaluation scripts run from ``InternVL/internvl_chat`` and name every file relative to it
(``data/textvqa/textvqa_val.jsonl``, ``eval/mme/Your_Results``); the image paths inside its converted
files are relative to it too (``data/textvqa/train_images/....jpg``). Our presets declare the same paths.
Users point ``--data-root`` at either folder, so both are accepted without a flag saying which:

* A declared path ``data/X`` is ``<root>/data/X`` (the root is ``internvl_chat``) or ``<root>/X`` (the
  root is ``internvl_chat/data``, whatever that folder is called).
* A declared path elsewhere in ``internvl_chat`` (``eval/...``: MME's question lists ship with InternVL's
  code, not in ``data/``) is ``<root>/eval/...`` or ``<root>/../eval/...``; ``..`` is taken lexically, so a
  ``data`` symlink's own parent is meant, not its target's.
* Any other declared path (the demo's ``synthetic/test.jsonl``) is ``<root>/path`` only.

Each path is looked up on its own: the first candidate that exists wins (a root that holds both never
changes meaning), and when none exists the error lists every candidate tried. Image paths written as
``data/...`` are read without that first component when the image root is a folder with no ``data``
subfolder: there the path as written cannot exist, so this never changes which file an existing path
names (an image root that does not exist keeps the paths as written, for the error messages).
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_FOLDER = "data"               # InternVL's internvl_chat/data
INTERNVL_CHAT_FOLDERS = ("eval",)  # other top-level folders of internvl_chat that presets read from


def _parts(declared: str) -> list[str]:
    return Path(declared).as_posix().split("/")


def declared_candidates(data_root: Path, declared: str) -> tuple[Path, ...]:
    """Where `declared` (a path relative to InternVL's internvl_chat folder) may be: first with --data-root
    as internvl_chat, then (for InternVL's folders) with --data-root as its data/ folder."""
    as_internvl_chat = data_root / declared
    parts = _parts(declared)
    if len(parts) > 1 and parts[0] == DATA_FOLDER:
        return as_internvl_chat, data_root.joinpath(*parts[1:])
    if len(parts) > 1 and parts[0] in INTERNVL_CHAT_FOLDERS:
        return as_internvl_chat, Path(os.path.normpath(data_root / os.pardir / declared))
    return (as_internvl_chat,)


def find_declared(data_root: Path, declared: str) -> Path:
    """The first candidate of `declared` that exists (file or folder), else the first candidate."""
    candidates = declared_candidates(data_root, declared)
    return next((candidate for candidate in candidates if candidate.exists()), candidates[0])


def describe_candidates(data_root: Path, declared: str) -> str:
    """The paths tried for `declared`, each with the --data-root reading that gives it, for error messages."""
    candidates = declared_candidates(data_root, declared)
    if len(candidates) == 1:
        return str(candidates[0])
    return (f"{candidates[0]} (--data-root as InternVL's internvl_chat folder) or {candidates[1]} "
            f"(--data-root as its {DATA_FOLDER}/ folder)")


def image_relative_path(image_root: Path, relative: str) -> str:
    """`relative` (already normalised) as it is to be joined to `image_root`: without a leading ``data/``
    when the image root is a folder with no ``data`` subfolder (it is InternVL's data/ folder itself)."""
    parts = _parts(relative)
    if (len(parts) > 1 and parts[0] == DATA_FOLDER and not os.path.isabs(relative)
            and image_root.is_dir() and not (image_root / DATA_FOLDER).is_dir()):
        return "/".join(parts[1:])
    return relative
