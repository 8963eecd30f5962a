"""The optional ``fewshot`` section of a recipe (:class:`FewShotSpec`) and the fold syntax it uses."""

import re
from typing import ClassVar

from pydantic import Field, field_validator

from pointgst.recipe.validation import _Broken, _validated


def parse_folds(text: str) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"0,2,5"`` -> sorted distinct fold numbers; ``ValueError`` otherwise."""
    folds: set[int] = set()
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(f"folds must look like 0-9, 3 or 0,2,5; got {text!r}")
        folds.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    return sorted(folds)


@_validated
class FewShotSpec:
    """The n-way k-shot protocol of a few-shot recipe (``pointgst fewshot``); the data section names the dataset the
    episodes are drawn from."""

    section: ClassVar[str] = "fewshot"
    way: int = Field(5, ge=2, description="classes per episode (5 or 10 in the papers)")
    shot: int = Field(10, ge=1, description="training shapes per class (10 or 20 in the papers)")
    query_per_class: int = Field(20, ge=1, description="test shapes per class (20 in the papers)")
    folds: str = Field("0-9", description="folds to run: `0-9`, `3` or `0,2,5`")
    episodes: str | None = Field(None, description=(
        "folder of converted official episodes (`pointgst data convert-fewshot`) or earlier drawn ones; null draws "
        "them from the data section's dataset into the run folder"))
    episode_seed: int = Field(0, ge=0, description="drawn episodes: fold f uses seed episode_seed * 1000 + f")

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: str) -> str:
        try:
            parse_folds(value)
        except ValueError:
            raise _Broken("folds", f" must look like 0-9, 3 or 0,2,5, got {value!r}") from None
        return value
