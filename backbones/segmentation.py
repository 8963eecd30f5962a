"""Part-segmentation models: the Point-MAE segmentation network (also ACT's and ReCon's), key-for-key with the
official ``get_model`` of Pang-Yatian/Point-MAE ``segmentation/models/pt.py``: 192 state-dict entries and
27,063,730 parameters with 50 parts and 16 categories (``docs/segmentation.md``).

points (B, N, 3) and the shape category (B,) -> per-point part logits (B, N, parts). The transformer sees the point
tokens only (no cls token); the outputs of three blocks (``fetch_layers``), each through the final LayerNorm, are
concatenated (3C channels at the G centres), pooled (max and mean) into a global feature, joined by a 64-d
embedding of the category, interpolated from the centres to every point (:class:`FeaturePropagation`) and
classified per point by a 1x1-convolution head.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry
from pointgst.ops import inverse_distance_interpolate
from pointgst.validation import check_int, model_input

from .base import PointBackbone
from .grouping import PatchGrouper
from .layers import Handle, PatchEncoder
from .point_mae import TINY_OPTIONS, TransformerEncoder

#: the segmentation head's modules (trained with every PEFT method), in the official key layout
SEGMENTATION_HEAD = ("label_conv", "propagation_0", "convs1", "convs2", "convs3", "bns1", "bns2")


def three_nn_interpolate(points: Tensor, centers: Tensor, features: Tensor) -> Tensor:
    """Inverse-distance interpolation from the 3 nearest centres: points (B, N, 3), centers (B, G, 3), features
    (B, G, D) -> (B, N, D), weights ``1 / (d² + 1e-8)`` normalised to sum 1 (d² the squared distance, from
    coordinate differences)."""
    distances = (points.unsqueeze(2) - centers.unsqueeze(1)).square().sum(-1)  # (B, N, G)
    return inverse_distance_interpolate(distances, features, 3, 1e-8)


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation (official keys ``mlp_convs.i`` / ``mlp_bns.i``): centre features interpolated to
    every point (:func:`three_nn_interpolate`), concatenated after the points' own features, then 1x1 Conv1d + BN +
    ReLU layers. points (B, N, 3), own (B, N, D0), centers (B, G, 3), features (B, G, D) -> (B, widths[-1], N)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.mlp_convs, self.mlp_bns = nn.ModuleList(), nn.ModuleList()
        for width in widths:
            self.mlp_convs.append(nn.Conv1d(in_channels, width, 1))
            self.mlp_bns.append(nn.BatchNorm1d(width))
            in_channels = width

    def forward(self, points: Tensor, own: Tensor, centers: Tensor, features: Tensor) -> Tensor:
        x = torch.cat([own, three_nn_interpolate(points, centers, features)], dim=-1).transpose(1, 2)
        for conv, norm in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(norm(conv(x)))
        return x


class PointMAESegmentation(PointBackbone):
    """Point-MAE / ACT / ReCon part segmentation. ``forward(points (B, N, 3), category (B,))`` -> logits (B, N, parts).

    The head's modules (:data:`SEGMENTATION_HEAD`) are top-level, as in the official model, so official segmentation
    checkpoints load key for key and pretrained Point-MAE weights fill everything before the head."""

    architecture = "point_mae_seg"
    task = "segmentation"
    classifier_name = "convs3"
    head_modules = SEGMENTATION_HEAD
    num_special_tokens = 0
    #: keys of a classification or pretraining checkpoint that this model has no place for (reported, not an error)
    foreign_checkpoint_keys = r"^(cls_token|cls_pos|cls_head_finetune\..*)$"

    def __init__(self, num_classes: int = 50, *, num_categories: int = 16, num_group: int = 128,
                 group_size: int = 32, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 drop_path_rate: float = 0.1, skip_near_origin: bool = False,
                 encoder_widths: tuple[int, int] = (128, 256), fetch_layers: tuple[int, ...] | None = None):
        check_int("num_categories", num_categories, 1)
        encoder_widths = tuple(encoder_widths)
        fetch_layers = check_fetch_layers(fetch_layers, depth)
        super().__init__(dict(num_classes=num_classes, num_categories=num_categories, num_group=num_group,
                              group_size=group_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                              drop_path_rate=drop_path_rate, skip_near_origin=skip_near_origin,
                              encoder_widths=encoder_widths, fetch_layers=fetch_layers))
        self.group_divider = PatchGrouper(num_group, group_size, skip_near_origin=skip_near_origin)
        self.encoder = PatchEncoder(embed_dim, widths=encoder_widths)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        self.blocks = TransformerEncoder(embed_dim, depth, num_heads, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)
        fetched = len(fetch_layers) * embed_dim
        self.label_conv = nn.Sequential(nn.Conv1d(num_categories, 64, 1, bias=False), nn.BatchNorm1d(64),
                                        nn.LeakyReLU(0.2))
        self.propagation_0 = FeaturePropagation(fetched + 3, (4 * embed_dim, 1024))
        self.convs1 = nn.Conv1d(1024 + 2 * fetched + 64, 512, 1)
        self.dp1 = nn.Dropout(0.5)
        self.convs2 = nn.Conv1d(512, 256, 1)
        self.convs3 = nn.Conv1d(256, num_classes, 1)
        self.bns1 = nn.BatchNorm1d(512)
        self.bns2 = nn.BatchNorm1d(256)
        self.segment = Handle(self._segment)

    @property
    def num_categories(self) -> int:
        return self.arch_config["num_categories"]

    @property
    def fetch_layers(self) -> tuple[int, ...]:
        return self.arch_config["fetch_layers"]

    @property
    def run_depth(self) -> int:
        """How many blocks run: up to the last fetched one (the others never reach the output)."""
        return self.fetch_layers[-1] + 1

    @property
    def transformer_blocks(self) -> list[nn.Module]:
        """The blocks that reach the output."""
        return list(self.blocks.blocks[:self.run_depth])

    @property
    def lora_targets(self) -> str:
        """The linear layers of the blocks that run."""
        return rf"blocks\.blocks\.({'|'.join(map(str, range(self.run_depth)))})\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"

    @property
    def unused_in_forward(self) -> tuple[str, ...]:
        """Key prefixes of the blocks after the last fetched one."""
        return tuple(f"blocks.blocks.{i}." for i in range(self.run_depth, self.depth))

    @property
    def grouping_options(self) -> dict:
        """What a saved model records to rebuild this one: the grouping, the fetched blocks and the categories."""
        return {k: self.arch_config[k] for k in ("num_group", "group_size", "skip_near_origin", "fetch_layers",
                                                 "num_categories")}

    def _special_tokens(self) -> tuple[Tensor, Tensor]:
        raise AttributeError(f"{self.architecture} has no cls token (its transformer sees the point tokens only)")

    def forward_tokens(self, points: Tensor) -> tuple[Tensor, TokenGeometry]:
        """points (B, N, 3) -> (the fetched blocks' normalised outputs concatenated (B, G, len(fetch_layers) * C),
        their geometry)."""
        neighborhood, centers = self.group(points)
        geometry = TokenGeometry(centers, self.num_special_tokens)
        outputs = self.blocks.block_outputs(self.blocks.blocks, self.encoder(neighborhood), self.pos_embed(centers),
                                            geometry, list(self.fetch_layers))
        return torch.cat([self.norm(x) for x in outputs], dim=-1), geometry

    def forward(self, points: Tensor, category: Tensor) -> Tensor:
        """points (B, N, 3), category (B,) integer ids in [0, num_categories) -> part logits (B, N, num_classes)."""
        points = model_input(points, min_points=self.group_divider.min_points, dtype=self.dtype,
                             training=self.training)
        category = self._check_category(category, points)
        tokens, geometry = self.forward_tokens(points)
        return self.segment(tokens, geometry, points, category)

    def _segment(self, tokens: Tensor, geometry: TokenGeometry, points: Tensor, category: Tensor) -> Tensor:
        """The official head: fetched tokens (B, G, F), points (B, N, 3), category (B,) -> logits (B, N, parts)."""
        n = points.shape[1]
        one_hot = F.one_hot(category, self.num_categories).to(tokens.dtype).unsqueeze(-1)  # (B, K, 1)
        pooled = torch.cat([tokens.max(dim=1).values, tokens.mean(dim=1), self.label_conv(one_hot)[..., 0]], dim=-1)
        per_point = self.propagation_0(points, points, geometry.centers, tokens)  # (B, 1024, N)
        x = torch.cat([per_point, pooled.unsqueeze(-1).expand(-1, -1, n)], dim=1)
        x = self.dp1(F.relu(self.bns1(self.convs1(x))))
        x = F.relu(self.bns2(self.convs2(x)))
        return self.convs3(x).transpose(1, 2)

    def _check_category(self, category: Tensor, points: Tensor) -> Tensor:
        if not isinstance(category, Tensor) or category.dtype.is_floating_point or category.shape != points.shape[:1]:
            got = f"{tuple(category.shape)} {category.dtype}" if isinstance(category, Tensor) else type(category)
            raise ValueError(f"category must be an integer tensor of shape (B,) = ({points.shape[0]},), one category "
                             f"id per cloud, got {got}")
        if len(category) and (category.min() < 0 or category.max() >= self.num_categories):
            raise ValueError(f"category ids must lie in [0, {self.num_categories}), got {category.min().item()}.."
                             f"{category.max().item()}")
        return category.long()

    def forward_features(self, points: Tensor) -> Tensor:
        raise TypeError(f"{self.architecture} segments: call model(points, category)")

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised last layer with ``num_classes`` part outputs."""
        check_int("num_classes", num_classes, 1)
        old = self.convs3
        self.convs3 = nn.Conv1d(old.in_channels, num_classes, 1).to(device=old.weight.device, dtype=old.weight.dtype)
        self.arch_config["num_classes"] = num_classes


def check_fetch_layers(fetch_layers: tuple[int, ...] | list[int] | None, depth: int) -> tuple[int, ...]:
    """``fetch_layers`` as a tuple (``None``: :func:`default_fetch_layers`), checked against ``depth``."""
    if fetch_layers is None:
        if depth < 3:
            raise ValueError(f"a segmentation model fetches three blocks, so depth must be >= 3, got {depth}")
        return default_fetch_layers(depth)
    fetch_layers = tuple(fetch_layers)
    if not fetch_layers or list(fetch_layers) != sorted(set(fetch_layers)) or \
            not all(isinstance(i, int) and 0 <= i < depth for i in fetch_layers):
        raise ValueError(f"fetch_layers must be ascending distinct block indices in [0, {depth}), got "
                         f"{list(fetch_layers)}")
    return fetch_layers


def default_fetch_layers(depth: int) -> tuple[int, ...]:
    """The blocks whose outputs a segmentation model fetches: the official (3, 7, 11) for 12 blocks, and in general
    the last block of each third of the depth."""
    return tuple(depth * (i + 1) // 3 - 1 for i in range(3))


class PointMAETinySegmentation(PointMAESegmentation):
    """``point_mae_tiny_seg``: :class:`PointMAESegmentation` with ``point_mae_tiny``'s sizes (4 blocks: fetches 0, 1,
    3), for CPU runs from the shipped ``point_mae_tiny.modelnet40`` weights."""

    architecture = "point_mae_tiny_seg"

    def __init__(self, num_classes: int = 50, **options):
        super().__init__(num_classes, **{**TINY_OPTIONS, **options})
