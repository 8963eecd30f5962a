"""PointGPT-S/B/L part segmentation, key-for-key with the official ``get_model`` of CGuangyan-BIT/PointGPT
``segmentation/models/pt.py`` (extractor and generator from ``segmentation/models/gpt2_seg.py``): 261 / 268 / 412
state-dict entries and 34,202,738 / 140,826,482 / 389,872,498 parameters with 50 parts and 16 categories.

points (B, N, 3) and the shape category (B,) -> per-point part logits (B, N, parts). The extractor runs as in
classification (:class:`~pointgst.backbones.pointgpt.PointGPT`): patches in the nearest-neighbour-chain order, tokens
``[sos, cls, t_1..t_G]`` with positions ``[cls_pos, sos_pos, PE(c_1)..PE(c_G)]`` (the official swap) and causal
attention, so the sos and cls tokens take part: every point token attends to both. The outputs of three extractor
blocks (``fetch_layers``), point tokens only, each through the top-level LayerNorm ``norm`` (neither ``ln_f`` nor a
``cls_norm``), are concatenated (3C channels at the G centres) and go to the Point-MAE segmentation head
(:class:`~pointgst.backbones.segmentation.PointMAESegmentation`: max and mean pooling, 64-d category embedding,
feature propagation, 1x1 convolutions), whose widths follow the size: propagation 3C+3 -> 4C -> 1024 (S) or 2048
(B, L), then 512 -> 256 (S) or 1024 -> 512 (B, L), then the parts.

Official details reproduced: the extractor blocks have stochastic depth rising linearly from 0 to 0.1 (the
classification blocks have none); the cls position is drawn from N(0, 1) without the classification model's
trunc-normal re-draw. Official details not run: the official forward also applies ``ln_f``, runs the generator and
computes Chamfer losses that it discards (only the NLL of the parts is trained), so ``blocks.ln_f``,
``blocks.increase_dim`` and ``generator_blocks`` are kept for the key layout only. The official extractor fetches
blocks 4, 8 and 12 (indices :data:`OFFICIAL_FETCH_LAYERS`) whatever the depth, so PointGPT-L's last 12 blocks never
reach its output; ``fetch_layers`` defaults to the last block of each third of the depth (3, 7, 11 for S and B; 7,
15, 23 for L), and ``fetch_layers=(3, 7, 11)`` reproduces the official L (the blocks after the last fetched one are
then not run, not adapted and not trained).
"""

import torch
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry
from pointgst.validation import check_int

from .base import PointBackbone
from .grouping import PatchGrouper
from .layers import DropPath, Handle, PatchEncoder
from .pointgpt import GENERATOR_DEPTH, SIZES, GPTBlock, GPTStack, SinePositionEmbedding
from .segmentation import SEGMENTATION_HEAD, FeaturePropagation, PointMAESegmentation, check_fetch_layers

#: the blocks the official code fetches for every size (blocks 4, 8 and 12)
OFFICIAL_FETCH_LAYERS = (3, 7, 11)
#: per size: (propagation output width ``prop_dim``, ``convs1`` width, ``convs2`` width), from the official script
HEAD_WIDTHS = {"pointgpt_s": (1024, 512, 256), "pointgpt_b": (2048, 1024, 512), "pointgpt_l": (2048, 1024, 512)}


class SegmentationGPTBlock(GPTBlock):
    """:class:`GPTBlock` with the segmentation extractor's stochastic depth on both residual branches, inside the
    ``attn_branch`` / ``ffn_branch`` handles (as in Point-MAE's block). Parameter-free: the keys are GPTBlock's.
    (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, num_heads: int, drop_path: float = 0.0):
        super().__init__(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _attention(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        return self.drop_path(super()._attention(x, geometry))

    def _feed_forward(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        return self.drop_path(super()._feed_forward(x, geometry))


class SegmentationExtractor(GPTStack):
    """The segmentation ``GPT_extractor`` (keys ``sos``, ``layers.i``, ``ln_f``, ``increase_dim.0``) with
    :class:`SegmentationGPTBlock` layers, stochastic depth ``linspace(0, drop_path_rate, depth)``."""

    def __init__(self, dim: int, depth: int, num_heads: int, drop_path_rate: float):
        super().__init__(dim, 0, num_heads)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList(SegmentationGPTBlock(dim, num_heads, rate) for rate in rates)


class PointGPTSegmentation(PointBackbone):
    """PointGPT part segmentation. ``forward(points (B, N, 3), category (B,))`` -> logits (B, N, parts).

    The head's modules (:data:`SEGMENTATION_HEAD`) are top-level and every other key is the classification
    model's without ``blocks.cls_head_finetune`` and ``blocks.cls_norm``, as in the official model: official
    segmentation checkpoints load key for key, pretrained PointGPT weights fill everything before the head (the cls
    token and position too when they come from a fine-tuned classifier). Tuners reach the cls token and position
    through ``special_tokens`` (``num_special_tokens = 2``: sos and cls precede the point tokens in the blocks)."""

    task = "segmentation"
    classifier_name = "convs3"
    head_modules = SEGMENTATION_HEAD
    num_special_tokens = 2
    #: keys of a classification checkpoint that this model has no place for (reported, not an error)
    foreign_checkpoint_keys = r"^blocks\.(cls_head_finetune|cls_norm)\..*$"

    def __init__(self, size: str = "pointgpt_s", num_classes: int = 50, *, num_categories: int = 16,
                 num_group: int = 128, group_size: int = 32, drop_path_rate: float = 0.1,
                 skip_near_origin: bool = False, fetch_layers: tuple[int, ...] | None = None):
        if size not in SIZES:
            raise ValueError(f"unknown PointGPT size {size!r}; choose one of {sorted(SIZES)}")
        check_int("num_categories", num_categories, 1)
        spec = SIZES[size]
        dim, depth, heads = spec["embed_dim"], spec["depth"], spec["num_heads"]
        fetch_layers = check_fetch_layers(fetch_layers, depth)
        super().__init__(dict(size=size, num_classes=num_classes, num_categories=num_categories, num_group=num_group,
                              group_size=group_size, drop_path_rate=drop_path_rate,
                              skip_near_origin=skip_near_origin, fetch_layers=fetch_layers, embed_dim=dim,
                              depth=depth, num_heads=heads))
        self.architecture = f"{size}_seg"
        self.group_divider = PatchGrouper(num_group, group_size, order="nn_chain", skip_near_origin=skip_near_origin)
        self.encoder = PatchEncoder(dim, large=spec["large_encoder"])
        self.pos_embed = SinePositionEmbedding(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim))
        self.sos_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = SegmentationExtractor(dim, depth, heads, drop_path_rate)
        self.generator_blocks = GPTStack(dim, GENERATOR_DEPTH, heads)  # in the official layout, never run
        self.norm = nn.LayerNorm(dim)
        prop_dim, width1, width2 = HEAD_WIDTHS[size]
        fetched = len(fetch_layers) * dim
        self.label_conv = nn.Sequential(nn.Conv1d(num_categories, 64, 1, bias=False), nn.BatchNorm1d(64),
                                        nn.LeakyReLU(0.2))
        self.propagation_0 = FeaturePropagation(fetched + 3, (4 * dim, prop_dim))
        self.convs1 = nn.Conv1d(prop_dim + 2 * fetched + 64, width1, 1)
        self.dp1 = nn.Dropout(0.5)
        self.convs2 = nn.Conv1d(width1, width2, 1)
        self.convs3 = nn.Conv1d(width2, num_classes, 1)
        self.bns1 = nn.BatchNorm1d(width1)
        self.bns2 = nn.BatchNorm1d(width2)
        self.segment = Handle(self._segment)

    # the head, its inputs' checks and the classifier reset are Point-MAE segmentation's (the same computation)
    num_categories = PointMAESegmentation.num_categories
    fetch_layers = PointMAESegmentation.fetch_layers
    forward = PointMAESegmentation.forward
    _segment = PointMAESegmentation._segment
    _check_category = PointMAESegmentation._check_category
    forward_features = PointMAESegmentation.forward_features
    reset_classifier = PointMAESegmentation.reset_classifier
    run_depth = PointMAESegmentation.run_depth
    grouping_options = PointMAESegmentation.grouping_options


    @property
    def transformer_blocks(self) -> list[nn.Module]:
        """The extractor blocks that reach the output (not those after the last fetched block)."""
        return list(self.blocks.layers[:self.run_depth])

    @property
    def lora_targets(self) -> str:
        """The MLP linears of the blocks that run."""
        return rf"blocks\.layers\.({'|'.join(map(str, range(self.run_depth)))})\.mlp\.(0|2)"

    @property
    def lora_target_parameters(self) -> list[str]:
        """The packed q/k/v projection of every block that runs (see :attr:`PointGPT.lora_target_parameters`)."""
        return [f"blocks.layers.{i}.attn.in_proj_weight" for i in range(self.run_depth)]

    @property
    def unused_in_forward(self) -> tuple[str, ...]:
        """Key prefixes of the official layout that the forward does not use."""
        skipped = tuple(f"blocks.layers.{i}." for i in range(self.run_depth, self.depth))
        return ("blocks.ln_f.", "blocks.increase_dim.", "generator_blocks.") + skipped


    def forward_tokens(self, points: Tensor) -> tuple[Tensor, TokenGeometry]:
        """points (B, N, 3) -> (the fetched blocks' point tokens, each through ``norm``, concatenated
        (B, G, len(fetch_layers) * C); their geometry)."""
        neighborhood, centers = self.group(points)
        geometry = TokenGeometry(centers, self.num_special_tokens)
        tokens = self.encoder(neighborhood)  # (B, G, C)
        b = tokens.shape[0]
        cls_token, cls_pos = self.special_tokens()
        h = torch.cat([self.blocks.sos.expand(b, 1, -1), cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([cls_pos.expand(b, -1, -1), self.sos_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)
        outputs = self.blocks.block_outputs(self.blocks.layers, h, pos, geometry, list(self.fetch_layers))
        special = self.num_special_tokens
        return torch.cat([self.norm(x[:, special:]) for x in outputs], dim=-1), geometry
