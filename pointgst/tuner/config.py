"""``PointGSTConfig``: the peft config of every pointgst tuning method."""

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from peft import PeftConfig

from pointgst.errors import UnknownNameError
from pointgst.spectral import SpectralOptions
from pointgst.validation import check_choice

PEFT_TYPE = "POINTGST"
PLACEMENTS = ("ffn", "ffn+attn")
BN_STATS = ("frozen", "update")
EIGH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: every official-code quirk of the PointGST repository, switched on at once by ``preset="official"``
OFFICIAL_PRESET = dict(dmin_scope="batch", gft_mode="official_code", laplacian="normalized", curve="z_order",
                       bn_stats="update")
PRESETS = {"official": OFFICIAL_PRESET}



@dataclass
class PointGSTConfig(PeftConfig):
    """Configuration of a PointGST adapter (PCSA in every block), as a peft config.

    Defaults are the paper's settings with the corrected behaviours (see the README's "official behaviour vs.
    defaults"); ``preset="official"`` reproduces the official code, quirks included.
    """

    method: str = field(default="pcsa", metadata={
        "help": "a parallel module ('pcsa' = PointGST, 'dcnv4' = deformable point layer), a head ('deepla_head'), "
                "or one of each joined by '+' (e.g. 'pcsa+deepla_head')"})
    rank: int = field(default=36, metadata={"help": "bottleneck width r of the module (PCSA rank, DCNv4 hidden)"})
    dcnv4_groups: int = field(default=4, metadata={"help": "dcnv4: channel groups"})
    dcnv4_points: int = field(default=9, metadata={"help": "dcnv4: sampling points per group (K nearest centres)"})
    head_width: int = field(default=128, metadata={"help": "deepla_head: width of the head's stages"})
    head_depths: list = field(default_factory=lambda: [2, 2], metadata={
        "help": "deepla_head: ResLFE iterations per stage (each further stage halves the tokens)"})
    head_k: int = field(default=16, metadata={"help": "deepla_head: neighbours per token"})
    hybrid_supervision: bool = field(default=False, metadata={
        "help": "deepla_head: per-stage semantic and spatial losses during training (weights decay over training)"})
    placement: str = field(default="ffn", metadata={
        "help": "'ffn': parallel to the FFN sublayer of every block (the paper); 'ffn+attn': also parallel to the "
                "attention sublayer (a deviation from the paper)"})
    local_size: int = field(default=32, metadata={"help": "centres per local graph (k)"})
    curve: str = field(default="z_order", metadata={"help": "space-filling curve of the local graphs: "
                                                            "'z_order' (official key) or 'hilbert'"})
    laplacian: str = field(default="normalized", metadata={"help": "'normalized' (official HEAD) or 'combinatorial'"})
    dmin_scope: str = field(default="sample", metadata={
        "help": "'sample': d_min per sample (a sample's basis never depends on its batch); 'batch': official"})
    gft_mode: str = field(default="paper", metadata={
        "help": "'paper': forward transform U^T x (the graph Fourier transform); 'official_code': U x"})
    eigh_dtype: str = field(default="float32", metadata={"help": "'float32' or 'float64' eigendecomposition"})
    bn_stats: str = field(default="frozen", metadata={
        "help": "'frozen': frozen BatchNorm layers stay in eval mode while training; 'update': their statistics "
                "follow the data as in the official code, and are saved with the adapter"})
    train_cls_tokens: bool = field(default=True, metadata={"help": "train the cls token and its position"})
    preset: Optional[str] = field(default=None, metadata={"help": "'official': every official-code quirk"})
    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={
        "help": "module names to adapt; derived from the backbone when None"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None)
    modules_to_save: Optional[list[str]] = field(default=None, metadata={
        "help": "modules trained and saved whole; the backbone's head modules when None"})
    target_parameters: Optional[list[str]] = field(default=None)
    layers_to_transform: Optional[Union[list[int], int]] = field(default=None)
    layers_pattern: Optional[Union[list[str], str]] = field(default=None)
    bias: str = field(default="none")
    backbone_options: Optional[dict] = field(default=None, metadata={
        "help": "architecture, number of classes and grouping options of the backbone the adapter was trained on "
                "(recorded at injection), used to rebuild the same backbone when loading"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.preset is not None:
            check_choice("preset", self.preset, tuple(PRESETS))
            for key, value in PRESETS[self.preset].items():
                setattr(self, key, value)
        self.method_parts()  # validates the method
        check_choice("placement", self.placement, PLACEMENTS)
        check_choice("bn_stats", self.bn_stats, BN_STATS)
        check_choice("eigh_dtype", self.eigh_dtype, tuple(EIGH_DTYPES))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        self.spectral_options()  # validates the spectral fields

    def method_parts(self) -> tuple[Optional[str], Optional[str]]:
        """``(parallel module or None, head module or None)`` of ``method``."""
        from pointgst.adapters import HEAD_MODULES, PARALLEL_MODULES

        parts = self.method.split("+")
        parallel = [p for p in parts if p in PARALLEL_MODULES]
        head = [p for p in parts if p in HEAD_MODULES]
        if len(parallel) > 1 or len(head) > 1 or len(parallel) + len(head) != len(parts):
            choices = sorted(PARALLEL_MODULES) + sorted(HEAD_MODULES)
            raise UnknownNameError(f"unknown method {self.method!r}: use one of {choices}, or one parallel module "
                                   "and one head joined by '+' (e.g. 'pcsa+deepla_head')")
        return (parallel[0] if parallel else None), (head[0] if head else None)

    def spectral_options(self) -> SpectralOptions:
        return SpectralOptions(local_size=self.local_size, curve=self.curve, laplacian=self.laplacian,
                               dmin_scope=self.dmin_scope, gft_mode=self.gft_mode,
                               eigh_dtype=EIGH_DTYPES[self.eigh_dtype])
