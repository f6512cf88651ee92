"""Final files: atomic writes, the run manifest (run.json) and the per-task fingerprint.

Final files are written to a temporary name in the same folder, fsynced, then renamed: a reader (or a
crash) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from launcher.errors import UserError


def _new_file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (read once: umask() sets it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _new_file_mode()


EARLIER_RUNS = "earlier-runs"     # replaced run.json files, which the report reads too


def archive_manifest(run_dir: Path) -> Path | None:
    """Keep the last run.json under earlier-runs/ before a new run replaces it: a rerun that covers only some
    tasks (or fails before its first task) writes a run.json without the others, and the report still wants
    their manifests (settings, timelines). Named by the old file's time, so archiving twice (a sweep before it
    starts the run, then the run itself) keeps one copy."""
    manifest = run_dir / "run.json"
    if not manifest.is_file():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(manifest.stat().st_mtime))
    target = run_dir / EARLIER_RUNS / f"run-{stamp}.json"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(manifest, target)
    return target


def atomic_write_text(path: Path, text: str) -> None:
    try:
        _atomic_write_text(path, text)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}. The journals are intact; free space "
                        "(or fix the out-dir) and rerun the same command to finish") from None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; results on a shared cluster must be readable as any new file is.
        os.fchmod(descriptor, _NEW_FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def checkpoint_identity(checkpoint: str) -> dict[str, Any]:
    """What identifies a model folder without hashing gigabytes: config.json's content and weight files' sizes."""
    folder = Path(checkpoint)
    identity: dict[str, Any] = {"path": str(folder.resolve())}
    config = folder / "config.json"
    if config.is_file():
        identity["config"] = read_json(config)
    identity["weights"] = {path.name: path.stat().st_size for path in sorted(folder.iterdir())
                           if path.suffix in {".safetensors", ".bin", ".pt", ".pth"}} if folder.is_dir() else {}
    return identity


def check_fingerprint(task_dir: Path, fingerprint: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse to mix two different runs in one task folder, unless --overwrite clears the old one.

    The fingerprint holds what must not change on resume (model, task, generation settings), never the
    world size, layout, batch size, schedule or the list of other tasks.
    """
    path = task_dir / "fingerprint.json"
    if path.is_file():
        try:
            existing = read_json(path)
        except (OSError, json.JSONDecodeError):
            existing = None
        if existing == json.loads(json.dumps(fingerprint)):
            return
        if not overwrite:
            changed = sorted(key for key in set(existing or {}) | set(fingerprint)
                             if (existing or {}).get(key) != json.loads(json.dumps(fingerprint)).get(key))
            raise UserError(f"{task_dir} holds a different run of this task (changed: {', '.join(changed)}). "
                            "Use another --out-dir, or pass --overwrite to replace it.")
        shutil.rmtree(task_dir)
    atomic_write_json(path, fingerprint)


def versions() -> dict[str, str]:
    """Installed versions of what a result depends on (read from package metadata: importing
    bitsandbytes just to ask would load its kernels)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "bitsandbytes", "tqdm", "pillow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")
