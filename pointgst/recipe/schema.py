"""The recipe schema: the five sections, the optional few-shot section and :class:`Recipe`, validated by pydantic v2.

Each section is a pydantic dataclass (``pydantic.dataclasses.dataclass`` with ``extra="forbid"``,
``validate_assignment=True``, ``strict=True``, ``allow_inf_nan=False``): types, ranges (field constraints) and
choices (``Literal``) are checked by pydantic, the rules that tie fields together by model validators. The
sections stay real dataclasses, so ``dataclasses.asdict`` / ``fields`` / ``replace`` keep working (the training
engine builds its datasets from ``asdict(recipe.data)``).

Type rules: an int is accepted, and converted, where a float is expected; a bool is not an int; a text field takes
only text; null only where the field allows it; a mapping needs string keys; every float must be finite.

Every check runs when a section or recipe is built, and assigning a field validates it
(``recipe.data.max_train_samples = 80``; a rejected value leaves the field unchanged). Rules between sections
(``data.val_fraction`` / ``train.selection``, ``backbone.num_group`` <= ``data.npoints``) are checked when the
:class:`Recipe` is built or a whole section is assigned to it. Pydantic's ``ValidationError`` never reaches the
caller: it becomes a one-line :class:`RecipeError` naming the key (``train.epochs must be int, got 'five' (str)``).
"""

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pointgst.recipe.fewshot_section import FewShotSpec
from pointgst.recipe.validation import (
    RecipeError,
    _Broken,
    _check_keys,
    _choice,
    _field_names,
    _kind,
    _require,
    _Rule,
    _validated,
)

DATASET_CLASSES = {"scanobjectnn": 15, "modelnet40": 40, "modelnet10": 10, "pack": None, "folder": None,
                   "shapenetpart": 50}
#: datasets of per-point labels (part segmentation); ``num_classes`` counts parts
SEGMENTATION_DATASETS = ("shapenetpart",)
SCANOBJECTNN_VARIANTS = ("obj_bg", "obj_only", "pb_t50_rs")
_MODELNET_FORMATS = ("npz", "normal_resampled", "dat")
DATASET_FORMATS = {"scanobjectnn": ("h5",), "modelnet40": _MODELNET_FORMATS, "modelnet10": _MODELNET_FORMATS,
                   "pack": ("npz",), "folder": (None,), "shapenetpart": (None,)}
AUGMENTATIONS = ("scale_translate", "scale_shift", "rotate_y", "none")
SCHEDULES = ("cosine", "official")
SELECTIONS = ("val", "test", "last")
PRECISIONS = ("fp32", "bf16", "fp16")
#: ``method.name`` of a pretraining recipe (masked autoencoding, ``pointgst pretrain``)
PRETRAIN_METHOD = "mae"

# --------------------------------------------------------------------------------------------------------------
# the sections


def _non_empty(field: str, value: str, rule: str) -> str:
    _require(value.strip() != "", field, value, rule)
    return value


@_validated
class BackboneSpec:
    section: ClassVar[str] = "backbone"
    name: str = Field("point_mae.pretrain", description=(
        "architecture (`point_mae`) or pretrained tag (`point_mae.pretrain`, `pointgpt_l.post_pretrain`, ...)"))
    pretrained: bool | str = Field(True, description=(
        "true: the tag's weights; false: random init; a string: a local path or a hub repo id"))
    num_group: int = Field(64, ge=1, description="point patches (FPS centres) per cloud; <= data.npoints")
    group_size: int = Field(32, ge=1, description="points per patch (kNN); <= data.npoints")
    drop_path_rate: float | None = Field(0.1, ge=0.0, lt=1.0, description=(
        "stochastic depth of the (frozen) blocks; Point-MAE family 0.1, null for PointGPT (unused there)"))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _non_empty("name", value, "a non-empty architecture or tag name")

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, value: bool | str) -> bool | str:
        if isinstance(value, str):
            _non_empty("pretrained", value, "true, false, or a non-empty path or hub repo id")
        return value


@_validated
class MethodSpec:
    section: ClassVar[str] = "method"
    name: str = Field("pcsa", description=f"tunable-module name (`pcsa`, ...; `{PRETRAIN_METHOD}`: pretraining)")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "fields of the method's config (`PointGSTConfig` for `pcsa`), checked when the method is built"))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _non_empty("name", value, "a non-empty method name")


@_validated
class DataSpec:
    section: ClassVar[str] = "data"
    dataset: Literal[tuple(DATASET_CLASSES)] = Field("modelnet40", description=(
        "dataset family; `pack`: an .npz pack (train.npz, test.npz, shape_names.txt) with any classes, e.g. a few-shot "
        "episode written by `pointgst fewshot`; `shapenetpart`: part segmentation (its layout is detected; "
        "num_classes counts the 50 parts; its official val list is the validation split, so val_fraction is 0)"))
    variant: str | None = Field(None, description=(
        f"ScanObjectNN variant ({', '.join(SCANOBJECTNN_VARIANTS)}); null for the other datasets"))
    format: str | None = Field("normal_resampled", description=(
        "file format: `npz` / `normal_resampled` / `dat` (ModelNet), `npz` (pack), `h5` (ScanObjectNN), null (folder, "
        "shapenetpart: detected)"))
    root: str = Field("data/ModelNet/modelnet40_normal_resampled", description=(
        "data folder; a relative path is relative to the current directory"))
    num_classes: int = Field(40, ge=1, description="classes; fixed by the dataset except for `folder`")
    npoints: int = Field(1024, ge=1, description="points fed to the model")
    point_all: int = Field(1200, ge=1, description=(
        "points kept by the official pre-model FPS (capped at the cloud size), of which `npoints` are drawn"))
    augmentation: Literal[AUGMENTATIONS] = Field("scale_translate", description=(
        "training augmentation, always explicit (never inferred from paths: official quirk Q9)"))
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "fraction of the training split held out for model selection; 0 only with `train.selection: test`"))
    max_train_samples: int | None = Field(None, ge=1, description=(
        "cap on the training samples for quick runs (stratified by class, seeded); null = all samples"))
    max_test_samples: int | None = Field(None, ge=1, description=(
        "cap on the test samples for quick runs (stratified by class, seeded); null = all samples"))
    axis_order: Literal["stored", "official"] = Field("stored", description=(
        "npz packs only: `stored` (as in the file) or `official` (y and z swapped into the PointNet++ orientation)"))
    allow_pickle: bool = Field(False, description=(
        "`format: dat` reads pickles, which can run code: an explicit opt-in, for trusted files only"))
    num_points: int | None = Field(None, ge=1, description=(
        "points read per cloud, for two layouts only: `dataset: folder` resamples every cloud to this many points "
        "(seeded; needed when the clouds differ in size), and the ModelNet `normal_resampled` text tree keeps the "
        "first this many rows of each file; ignored by the other datasets and formats; null = every point"))

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        return _non_empty("root", value, "a non-empty folder path")

    @model_validator(mode="after")
    def _consistent(self) -> "DataSpec":
        if self.dataset == "scanobjectnn":
            _choice("variant", self.variant, SCANOBJECTNN_VARIANTS)
        else:
            _require(self.variant is None, "variant", self.variant, f"null for dataset {self.dataset!r}")
        _choice("format", self.format, DATASET_FORMATS[self.dataset], note=f" (dataset {self.dataset!r})")
        expected = DATASET_CLASSES[self.dataset]
        if expected is not None:
            _require(self.num_classes == expected, "num_classes", self.num_classes,
                     f"{expected} for dataset {self.dataset!r}")
        _require(self.point_all >= self.npoints, "point_all", self.point_all, f">= data.npoints ({self.npoints})")
        if self.dataset in SEGMENTATION_DATASETS:
            _require(self.val_fraction == 0.0, "val_fraction", self.val_fraction,
                     f"0 for dataset {self.dataset!r} (its official val list is the validation split)")
        return self


@_validated
class TrainSpec:
    section: ClassVar[str] = "train"
    epochs: int = Field(300, ge=1, description="training epochs")
    warmup_epochs: Annotated[int, _Rule(">= 0 and < train.epochs")] = Field(
        10, ge=0, description="linear warmup epochs; < epochs")
    batch_size: int = Field(32, ge=1, description="samples per optimisation step")
    lr: float = Field(5e-4, gt=0.0, description="peak learning rate")
    lr_min: float = Field(1e-6, ge=0.0, description="final learning rate of the cosine decay; <= lr")
    warmup_lr_init: float = Field(1e-6, ge=0.0, description="learning rate at the start of the warmup; <= lr")
    weight_decay: float = Field(0.05, ge=0.0, description="AdamW weight decay")
    grad_clip: Annotated[float | None, _Rule("> 0 or null (no clipping)")] = Field(10.0, gt=0.0, description=(
        "L2 norm clip over all trainable parameters; null = no clipping"))
    schedule: Literal[SCHEDULES] = Field("cosine", description=(
        "`cosine`: per-step warmup + cosine; `official`: timm epoch-level schedule with the official quirks"))
    selection: Literal[SELECTIONS] = Field("val", description=(
        "`val`: best epoch on the held-out validation split; `test`: best on the test split (official); `last`: no "
        "selection, the last epoch (no per-epoch evaluation; needs data.val_fraction 0)"))
    seed: int = Field(0, ge=0, description="seed of the splits, subsets, point shuffles and initialisation")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy loss")
    precision: Literal[PRECISIONS] = Field("fp32", description=(
        "`fp32`; `bf16`: forward under bfloat16 autocast (CPU or CUDA); `fp16`: float16 autocast with a gradient "
        "scaler (CUDA). Weights, optimiser states, checkpoints and adapters stay float32; spectral bases are always "
        "computed in float32 or float64"))
    gradient_checkpointing: bool = Field(False, description=(
        "recompute the transformer blocks' activations in the backward pass instead of keeping them: less memory, "
        "one more forward of the blocks per step, the same results up to float rounding"))

    @model_validator(mode="after")
    def _consistent(self) -> "TrainSpec":
        _require(self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs,
                 f">= 0 and < train.epochs ({self.epochs})")
        for name in ("lr_min", "warmup_lr_init"):
            value = getattr(self, name)
            _require(value <= self.lr, name, value, f">= 0 and <= train.lr ({self.lr})")
        return self


@_validated
class EvalSpec:
    section: ClassVar[str] = "eval"
    vote: Annotated[int, _Rule(">= 0 (0 = no voting)")] = Field(0, ge=0, description=(
        "0 = single pass; N = average the logits of N augmented passes"))
    vote_repeats: int = Field(1, ge=1, description="repeated voting runs, reported as mean +- std")


_SECTIONS: dict[str, type] = {"backbone": BackboneSpec, "method": MethodSpec, "data": DataSpec,
                              "train": TrainSpec, "eval": EvalSpec}
#: sections a recipe may have (few-shot recipes): absent means null
_OPTIONAL_SECTIONS: dict[str, type] = {"fewshot": FewShotSpec}
_TOP_KEYS = ("name", "description", *_SECTIONS, *_OPTIONAL_SECTIONS)


# --------------------------------------------------------------------------------------------------------------
# the recipe


@_validated
class Recipe:
    """A complete training and evaluation setting; see :mod:`pointgst.recipe` and ``recipes/*.yaml``."""

    section: ClassVar[str] = ""
    name: str = Field("custom", description="recipe name (a built-in recipe: its file stem)")
    description: str = Field("", description="one line saying what the setting is")
    backbone: BackboneSpec = Field(default_factory=BackboneSpec, description="the backbone and its weights")
    method: MethodSpec = Field(default_factory=MethodSpec, description="the tuning method")
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset and its pipeline")
    train: TrainSpec = Field(default_factory=TrainSpec, description="the optimisation schedule")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="the evaluation protocol")
    fewshot: FewShotSpec | None = Field(None, description="the few-shot protocol (few-shot recipes only)")

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        own_val = self.data.dataset in SEGMENTATION_DATASETS  # ShapeNetPart has an official val list
        if self.data.val_fraction == 0.0 and self.train.selection == "val" and not own_val:
            raise _Broken(None, "data.val_fraction is 0 (no validation split), so train.selection must be 'test' or "
                                "'last', got 'val'; hold out a validation split (e.g. data.val_fraction=0.1), select "
                                "on the test split (train.selection=test) or keep the last epoch "
                                "(train.selection=last)")
        if self.data.val_fraction > 0.0 and self.train.selection == "last":
            raise _Broken(None, f"train.selection=last selects nothing, so the validation split (data.val_fraction="
                                f"{self.data.val_fraction:g}) would be held out of training for nothing; set "
                                "data.val_fraction=0 to train on the whole training split")
        if own_val and self.eval.vote:
            raise _Broken(None, f"eval.vote is {self.eval.vote}, but voting is a classification protocol and dataset "
                                f"{self.data.dataset!r} is part segmentation; set eval.vote=0")
        for name in ("num_group", "group_size"):
            value = getattr(self.backbone, name)
            _require(value <= self.data.npoints, f"backbone.{name}", value, f"<= data.npoints ({self.data.npoints})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-serialisable) that :meth:`from_dict` turns back into an equal recipe."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out.update({key: dataclasses.asdict(getattr(self, key)) for key in _SECTIONS})
        out.update({key: dataclasses.asdict(getattr(self, key)) for key in _OPTIONAL_SECTIONS
                    if getattr(self, key) is not None})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str = "custom") -> "Recipe":
        """Build and validate a recipe. Missing keys take their defaults; the dict's ``name`` key, if any,
        wins over ``name``. Raises :class:`RecipeError` on unknown keys, wrong types and invalid values."""
        if not isinstance(d, Mapping):
            raise RecipeError(f"a recipe must be a mapping with the sections {', '.join(_SECTIONS)}, "
                              f"got {_kind(d)}")
        _check_keys("", list(d), _TOP_KEYS)
        sections = {}
        for key, section_cls in _SECTIONS.items():
            raw = d.get(key)
            raw = {} if raw is None else raw
            if not isinstance(raw, Mapping):
                raise RecipeError(f"section {key!r} must be a mapping of its fields, got {raw!r} ({_kind(raw)})")
            _check_keys(key, list(raw), _field_names(section_cls))
            sections[key] = section_cls(**raw)
        for key, section_cls in _OPTIONAL_SECTIONS.items():
            raw = d.get(key)
            if raw is not None and not isinstance(raw, Mapping):
                raise RecipeError(f"section {key!r} must be a mapping of its fields or null, got {raw!r} "
                                  f"({_kind(raw)})")
            if raw is not None:
                _check_keys(key, list(raw), _field_names(section_cls))
            sections[key] = None if raw is None else section_cls(**raw)
        return cls(name=d.get("name", name), description=d.get("description", ""), **sections)
