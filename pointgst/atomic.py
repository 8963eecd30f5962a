"""Atomic writes: nothing a user keeps is ever half-written, replaced by accident, or lost to an interrupted write.

- :func:`write_atomic`: one file, through a temporary file renamed into place.
- :func:`write_folder`: a folder of files (an adapter, a weights folder). Written into a temporary folder first; a new
  folder then appears in one rename, and into an existing folder only pointgst's own files are moved, one atomic
  rename each. A manifest (``pointgst.json``) lists every file pointgst wrote into the folder and what the latest
  save was, so the next save knows which files are its own: it replaces those (and adds to them, e.g. a second
  adapter in its subfolder), and it never touches (or, without ``overwrite=True``, even writes beside) a file it did
  not write.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

MANIFEST = "pointgst.json"
_SAVE_PREFIX = ".pointgst-save-"


def ordinary_mode(path: str | Path, *, directory: bool = False) -> None:
    """Give a temporary file or folder (created owner-only by ``tempfile``) the mode a plain ``open`` or
    ``mkdir`` would give it under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it onto ``path`` in one step; on
    any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        ordinary_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_atomic` of a text file."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Remove the temporary files :func:`write_atomic` leaves beside ``folder / name`` when its process is killed
    mid-write (call it only where no other process can be writing: e.g. in a locked run folder)."""
    for stale in folder.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a folder written by :func:`write_folder`, or ``{}`` (none, or unreadable)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def write_folder(out_dir: str | os.PathLike, fill: Callable[[Path], dict[str, Any]], *,
                 overwrite: bool = False) -> Path:
    """Write a folder of files safely: ``fill(tmp)`` writes them into a temporary folder and returns what the
    manifest records besides the file list.

    - ``out_dir`` absent: the temporary folder (beside it) is renamed to ``out_dir`` in one step.
    - ``out_dir`` a folder: files of earlier pointgst saves (listed in its manifest) are replaced where the new save
      writes them, and any other file is kept. A folder holding files pointgst did not write needs
      ``overwrite=True`` (they are kept even then; only same-named files are replaced).
    - ``out_dir`` a file: refused.
    On any error ``out_dir`` is left as it was.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose a folder path to save into (the file is kept)")
    existing = out.is_dir()
    manifest = read_manifest(out) if existing else {}
    previous = set(manifest.get("files", []))
    if existing:
        for stale in out.glob(f"{_SAVE_PREFIX}*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in previous | {MANIFEST})
        if foreign and not overwrite:
            shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
            raise FileExistsError(f"{out} holds files pointgst did not write ({shown}); save into a new or empty "
                                  "folder, or pass overwrite=True (--overwrite) to write pointgst's files beside "
                                  "them (the others are kept)")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_SAVE_PREFIX if existing else f".{out.name}.",
                                dir=out if existing else out.parent))
    try:
        record = fill(tmp)
        written = sorted(p.name for p in tmp.iterdir())
        kept = {name for name in previous if (out / name).exists()}
        for key, value in record.items():  # the latest save wins, records of earlier saves are merged into
            manifest[key] = {**manifest[key], **value} if isinstance(value, dict) and isinstance(
                manifest.get(key), dict) else value
        manifest["files"] = sorted(kept | set(written))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in [tmp, *tmp.rglob("*")]:
            ordinary_mode(path, directory=path.is_dir())
        if not existing:
            tmp.rename(out)
            return out
        for name in written + [MANIFEST]:
            _move_into(tmp / name, out / name, trash=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into(source: Path, target: Path, *, trash: Path) -> None:
    """Move ``source`` onto ``target``: a file in one atomic rename; a folder replaces an earlier one (moved into
    ``trash`` first, since a rename cannot replace a non-empty folder)."""
    if source.is_dir() and target.is_dir():
        target.rename(trash / f"{_SAVE_PREFIX}old-{target.name}")
    os.replace(source, target)

