"""A run folder's life: claimed by one process at a time, created with its recipe, continued only with that recipe.

- A lock (``.lock``, ``fcntl.flock``) is held while a process trains in the folder; a second process is refused with
  the holder's pid. The operating system releases it when the process ends, killed or not.
- ``recipe.yaml`` is written when a run starts; ``--resume`` compares the recipe it is given with it and refuses a
  different one, naming the keys that differ.
- A folder whose run never finished an epoch (no ``checkpoint-last.pt``) is started again from scratch.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import yaml

from pointgst.atomic import remove_stale_temporaries, write_text_atomic
from pointgst.errors import RunError
from pointgst.recipe import Recipe, RecipeError

from .run_files import BEST_STATE, CHECKPOINT, RECIPE, read_run_recipe

LOCK = ".lock"
#: recipe keys a resumed run may change: they do not change what is trained or how
RESUMABLE_CHANGES = ("name", "description", "train.num_workers")


class RunFolderBusyError(RunError):
    """Another process is training in the run folder."""


class RunLock:
    """An exclusive lock on a run folder for the lifetime of this object's process (or until :meth:`release`)."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "unknown"
            self._handle.close()
            raise RunFolderBusyError(f"{run_dir} is in use by another pointgst process (pid {holder}); wait for it to "
                                     "finish or choose another --out folder") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def prepare_run_dir(run_dir: Path, recipe: Recipe, *, resume: bool) -> bool:
    """Make ``run_dir`` ready for ``recipe`` (the caller holds its :class:`RunLock`); True when the run continues
    from ``checkpoint-last.pt``, False when it starts from scratch."""
    remove_stale_temporaries(run_dir, CHECKPOINT)
    remove_stale_temporaries(run_dir, BEST_STATE)
    if (run_dir / CHECKPOINT).is_file():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
                                  "--out folder")
        check_same_recipe(read_run_recipe(run_dir), recipe, run_dir)
        return True
    others = [p.name for p in run_dir.iterdir() if p.name not in (LOCK, RECIPE)]
    if others:
        raise FileExistsError(f"{run_dir} holds files but no {CHECKPOINT} ({', '.join(sorted(others)[:4])}): not a "
                              "run pointgst can continue or restart; choose another --out folder")
    if (run_dir / RECIPE).is_file():
        print(f"{run_dir}: its run never finished an epoch (no {CHECKPOINT}); starting it again from the beginning")
    elif resume:
        raise FileNotFoundError(f"--resume: {run_dir} holds no run to continue; start the run without --resume")
    write_text_atomic(run_dir / RECIPE, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return False


def check_same_recipe(recorded: Recipe, given: Recipe, run_dir: Path) -> None:
    """:class:`RecipeError` naming every key whose value differs (except :data:`RESUMABLE_CHANGES`)."""
    differences = [f"{key}: {old!r} -> {new!r}" for key, old, new in _differences(recorded.to_dict(), given.to_dict())
                   if key not in RESUMABLE_CHANGES]
    if differences:
        raise RecipeError(f"{run_dir} was started with another recipe ({'; '.join(differences[:6])}"
                          f"{'; ...' if len(differences) > 6 else ''}); resume with the recipe in {run_dir / RECIPE}, "
                          "or start a new run in another --out folder")


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]
