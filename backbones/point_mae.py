"""Point-MAE fine-tuning model (also the architecture of ACT and ReCon), key-for-key with the official
``PointTransformer`` of Pang-Yatian/Point-MAE: 174 state-dict entries, 22,093,327 parameters with 15 classes."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry

from .base import PointBackbone
from .grouping import PatchGrouper
from .layers import BlockStack, DropPath, Handle, PatchEncoder, classification_head


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` (no bias) and a ``proj`` (bias). (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.attend(self.qkv(x)))

    def attend(self, qkv: Tensor) -> Tensor:
        """The attention itself, before ``proj``: packed projections (B, T, 3C) -> (B, T, C) (a method that rescales
        the projections, such as DAPT, calls it between ``qkv`` and ``proj``)."""
        b, t, c3 = qkv.shape
        c = c3 // 3
        q, k, v = qkv.reshape(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, head_dim)
        return x.transpose(1, 2).reshape(b, t, c)


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2. (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN ViT block: ``x + attn_branch(x, geometry)``, then ``x + ffn_branch(x, geometry)``.

    ``attn_branch = DropPath(Attn(LN1(x)))`` and ``ffn_branch = DropPath(MLP(LN2(x)))`` are :class:`Handle` handles
    (the geometry is not used by the branches themselves), so a tuner can add a module in parallel to either branch.
    (B, T, C) -> (B, T, C).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn_branch = Handle(self._attention)
        self.ffn_branch = Handle(self._feed_forward)

    def _attention(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        return self.drop_path(self.attn(self.norm1(x)))

    def _feed_forward(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        return self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        x = x + self.attn_branch(x, geometry)
        return x + self.ffn_branch(x, geometry)


class TransformerEncoder(BlockStack):
    """``depth`` blocks; the positional embedding is re-added before every block: ``x = block(x + pos, geometry)``."""

    def __init__(self, dim: int, depth: int, num_heads: int, drop_path_rate: float):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, drop_path=rate) for rate in rates)

    def forward(self, x: Tensor, pos: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        return self.run_blocks(self.blocks, x, pos, geometry)


class PointMAE(PointBackbone):
    """Point-MAE / ACT / ReCon classifier. points (B, N, 3) -> logits (B, num_classes).

    Tokens are ``[cls, t_1..t_G]``; features ``[cls output, max over point tokens]`` after the final norm.
    """

    architecture = "point_mae"
    classifier_name = "cls_head_finetune"
    head_modules = ("cls_head_finetune",)
    lora_targets = r"blocks\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
    num_special_tokens = 1

    def __init__(self, num_classes: int = 40, *, num_group: int = 64, group_size: int = 32, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1, skip_near_origin: bool = False,
                 encoder_widths: tuple[int, int] = (128, 256)):
        encoder_widths = tuple(encoder_widths)  # a JSON config gives a list
        super().__init__(dict(num_classes=num_classes, num_group=num_group, group_size=group_size,
                              embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                              drop_path_rate=drop_path_rate, skip_near_origin=skip_near_origin,
                              encoder_widths=encoder_widths))
        self.group_divider = PatchGrouper(num_group, group_size, skip_near_origin=skip_near_origin)
        self.encoder = PatchEncoder(embed_dim, widths=encoder_widths)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        self.blocks = TransformerEncoder(embed_dim, depth, num_heads, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)
        self.cls_head_finetune = classification_head(2 * embed_dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.cls_pos, std=0.02, a=-2.0, b=2.0)

    @property
    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.blocks.blocks)

    @property
    def final_norm(self) -> nn.Module:
        return self.norm

    def sequence(self, tokens: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
        """Point tokens (B, G, C) and their centres (B, G, 3) -> the blocks' input ``[cls, t_1..t_G]`` and its
        positions ``[cls_pos, pos_embed(c_1)..]``, each (B, 1 + G, C) (a forward method builds on it)."""
        b = tokens.shape[0]
        cls_token, cls_pos = self.special_tokens()
        x = torch.cat([cls_token.expand(b, -1, -1), tokens], dim=1)
        return x, torch.cat([cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)

    def forward_tokens(self, points: Tensor) -> tuple[Tensor, TokenGeometry]:
        neighborhood, centers = self.group(points)
        geometry = TokenGeometry(centers, self.num_special_tokens)
        x, pos = self.sequence(self.encoder(neighborhood), centers)
        return self.norm(self.blocks(x, pos, geometry)), geometry

    def pool(self, tokens: Tensor) -> Tensor:
        return torch.cat([tokens[:, 0], tokens[:, 1:].max(dim=1).values], dim=-1)


#: ``point_mae_tiny``: Point-MAE narrowed and shortened so that pretraining fits a 2-core CPU (same code path)
TINY_OPTIONS = dict(embed_dim=192, depth=4, num_heads=3, encoder_widths=(32, 64))


class PointMAETiny(PointMAE):
    """``point_mae_tiny``: :class:`PointMAE` with :data:`TINY_OPTIONS` as defaults (pointgst's own small backbone,
    pretrained on the ModelNet40 training split as ``point_mae_tiny.modelnet40``)."""

    architecture = "point_mae_tiny"

    def __init__(self, num_classes: int = 40, **options):
        super().__init__(num_classes, **{**TINY_OPTIONS, **options})
