"""Atomic file writes: nothing a user keeps is ever half-written or lost to an interrupted write."""

import os
import tempfile
from pathlib import Path
from typing import Callable


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
