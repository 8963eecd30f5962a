"""PointGPT-S/B/L fine-tuning model, key-for-key with the official ``PointTransformer`` of
CGuangyan-BIT/PointGPT (243 / 250 / 394 state-dict entries; 29,232,335 / 120,461,263 / 360,457,679
parameters with 15 classes, the generator branch included)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry
from pointgst.losses import chamfer_l1, chamfer_l2

from .base import PointBackbone
from .grouping import PatchGrouper
from .layers import BlockStack, Handle, PatchEncoder, classification_head

SIZES = {
    "pointgpt_s": dict(embed_dim=384, depth=12, num_heads=6, large_encoder=False),
    "pointgpt_b": dict(embed_dim=768, depth=12, num_heads=12, large_encoder=True),
    "pointgpt_l": dict(embed_dim=1024, depth=24, num_heads=16, large_encoder=True),
}
GENERATOR_DEPTH = 4
POINTS_PER_PATCH = 32  # the generator's increase_dim predicts 32 x 3 coordinates per patch


class SinePositionEmbedding(nn.Module):
    """PointGPT's parameter-free ``PositionEmbeddingCoordsSine``.

    Per coordinate ``F = (C // 3) // 2 * 2`` features ``sin/cos(2π u / T^(2⌊i/2⌋/F))`` interleaved
    (sin on even i, cos on odd i); coordinates concatenated x | y | z, zero-padded to C.
    The official model builds it as ``PositionEmbeddingCoordsSine(3, C, 1.0)``: the third argument is the
    temperature, so T = 1 (every frequency equals 2π), not the class default 10000
    (CGuangyan-BIT/PointGPT ``models/PointGPT.py``). xyz (B, L, 3) -> (B, L, C).
    """

    def __init__(self, dim: int, temperature: float = 1.0):
        super().__init__()
        self.dim = dim
        self.temperature = temperature
        self.per_axis = (dim // 3) // 2 * 2

    def forward(self, xyz: Tensor) -> Tensor:
        f = self.per_axis
        i = torch.arange(f, dtype=torch.float32, device=xyz.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / f)
        v = (xyz.float() * 2 * math.pi).unsqueeze(-1) / dim_t  # (B, L, 3, F)
        emb = torch.stack([v[..., 0::2].sin(), v[..., 1::2].cos()], dim=-1).flatten(-2)  # interleaved
        emb = emb.flatten(-2)  # (B, L, 3F)
        pad = self.dim - 3 * f
        if pad:
            emb = torch.cat([emb, emb.new_zeros(*emb.shape[:-1], pad)], dim=-1)
        return emb.to(xyz.dtype)


class GPTBlock(nn.Module):
    """PointGPT's block: ``x = LN1(x)`` (the residual stream is replaced by its normalisation), then
    ``x + attn_branch(x, geometry)`` with causal multi-head attention, then ``x + ffn_branch(x, geometry)`` with
    ``ffn_branch = MLP(LN2(x))`` (handles, as in Point-MAE's block). (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = nn.Identity()  # no stochastic depth; named as Point-MAE's block names its drop path
        self.attn_branch = Handle(self._attention)
        self.ffn_branch = Handle(self._feed_forward)

    def _attention(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        return self.attn(x, x, x, attn_mask=causal, need_weights=False)[0]

    def qkv(self, x: Tensor) -> Tensor:
        """The packed q/k/v projection of the attention: (B, T, C) -> (B, T, 3C) (a method that rescales the
        projections, such as DAPT, runs ``attn.out_proj(attend(f(qkv(x))))``)."""
        return F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)

    def attend(self, qkv: Tensor) -> Tensor:
        """Causal attention over packed projections, before ``attn.out_proj``: (B, T, 3C) -> (B, T, C).
        ``attn.out_proj(attend(qkv(x)))`` equals the block's attention up to float rounding."""
        b, t, c3 = qkv.shape
        heads = self.attn.num_heads
        q, k, v = qkv.reshape(b, t, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, head_dim)
        return x.transpose(1, 2).reshape(b, t, c3 // 3)

    def _feed_forward(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        return self.mlp(self.ln_2(x))

    def forward(self, x: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        x = self.ln_1(x)
        x = x + self.attn_branch(x, geometry)
        return x + self.ffn_branch(x, geometry)


class GPTStack(BlockStack):
    """A causal block stack with ``sos``, ``ln_f`` and ``increase_dim`` (the official ``GPT_extractor`` /
    ``GPT_generator`` layout). ``pos`` is re-added before every layer."""

    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.sos = nn.Parameter(torch.zeros(dim))
        self.layers = nn.ModuleList(GPTBlock(dim, num_heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.increase_dim = nn.Sequential(nn.Conv1d(dim, 3 * POINTS_PER_PATCH, 1))
        nn.init.normal_(self.sos)

    def run_layers(self, h: Tensor, pos: Tensor, geometry: TokenGeometry | None = None) -> Tensor:
        """h, pos (B, T, C) -> ln_f(layers(h)) (B, T, C)."""
        return self.ln_f(self.run_blocks(self.layers, h, pos, geometry))


class GPTExtractor(GPTStack):
    """The extractor stack plus the fine-tuning head ``cls_head_finetune`` and ``cls_norm``."""

    def __init__(self, dim: int, depth: int, num_heads: int, num_classes: int):
        super().__init__(dim, depth, num_heads)
        self.cls_head_finetune = classification_head(2 * dim, num_classes)
        self.cls_norm = nn.LayerNorm(dim)


class PointGPT(PointBackbone):
    """PointGPT classifier. points (B, N, 3) -> logits (B, num_classes).

    Patches are ordered by the nearest-neighbour chain. Tokens ``[sos, cls, t_1..t_L]`` with positions
    ``[cls_pos, sos_pos, PE(c_1)..PE(c_L)]`` (the official swap), causal attention at fine-tuning too, so
    the cls output is input-independent; features ``[cls output, max over point tokens]`` after
    ``ln_f`` and ``cls_norm``. ``with_generator`` builds the generator branch of the official fine-tuning
    model (its keys are in the official checkpoints); :meth:`forward_with_generation` uses it.
    """

    classifier_name = "blocks.cls_head_finetune"
    head_modules = ("blocks.cls_head_finetune", "blocks.cls_norm")
    lora_targets = r"blocks\.layers\.\d+\.mlp\.(0|2)"
    num_special_tokens = 2
    unused_in_forward = ("blocks.increase_dim.", "generator_blocks.", "norm.")

    def __init__(self, size: str = "pointgpt_s", num_classes: int = 40, *, num_group: int = 64,
                 group_size: int = 32, with_generator: bool = True, skip_near_origin: bool = False):
        if size not in SIZES:
            raise ValueError(f"unknown PointGPT size {size!r}; choose one of {sorted(SIZES)}")
        spec = SIZES[size]
        super().__init__(dict(size=size, num_classes=num_classes, num_group=num_group, group_size=group_size,
                              with_generator=with_generator, skip_near_origin=skip_near_origin,
                              embed_dim=spec["embed_dim"], depth=spec["depth"], num_heads=spec["num_heads"]))
        self.architecture = size
        dim, heads = spec["embed_dim"], spec["num_heads"]
        self.group_divider = PatchGrouper(num_group, group_size, order="nn_chain",
                                          skip_near_origin=skip_near_origin)
        self.encoder = PatchEncoder(dim, large=spec["large_encoder"])
        self.pos_embed = SinePositionEmbedding(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim))
        self.sos_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = GPTExtractor(dim, spec["depth"], heads, num_classes)
        self.generator_blocks = GPTStack(dim, GENERATOR_DEPTH, heads) if with_generator else None
        self.norm = nn.LayerNorm(dim)  # present in the official model and its checkpoints, never used
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.cls_pos, std=0.02, a=-2.0, b=2.0)

    @property
    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.blocks.layers)

    @property
    def final_norm(self) -> nn.Module:
        return self.blocks.ln_f

    @property
    def head_norm(self) -> nn.Module:
        return self.blocks.cls_norm

    @property
    def lora_target_parameters(self) -> list[str]:
        """The packed q/k/v projection of every extractor block, adapted as a parameter (peft reparametrises it as
        ``W + BA``; its LoRA for ``nn.MultiheadAttention`` modules would merge and unmerge the frozen weights around
        every forward, which changes them by rounding). ``out_proj`` is read as a weight by the attention, not called,
        so it is not adapted."""
        return [f"blocks.layers.{i}.attn.in_proj_weight" for i in range(self.depth)]

    def sequence(self, tokens: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
        """Point tokens (B, L, C) and their centres (B, L, 3) (in the chain order of :meth:`group`) -> the layers'
        input ``[sos, cls, t_1..t_L]`` and its positions ``[cls_pos, sos_pos, PE(c_1)..]`` (the official swap), each
        (B, 2 + L, C) (a forward method builds on it)."""
        b = tokens.shape[0]
        cls_token, cls_pos = self.special_tokens()
        h = torch.cat([self.blocks.sos.expand(b, 1, -1), cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([cls_pos.expand(b, -1, -1), self.sos_pos.expand(b, -1, -1),
                         self.pos_embed(centers)], dim=1)
        return h, pos

    def _extract(self, points: Tensor) -> tuple[Tensor, Tensor, TokenGeometry]:
        """points -> (ln_f output (B, L+2, C) for [sos, cls, t_1..t_L], neighborhood, geometry)."""
        neighborhood, centers = self.group(points)
        geometry = TokenGeometry(centers, self.num_special_tokens)
        h, pos = self.sequence(self.encoder(neighborhood), centers)
        return self.blocks.run_layers(h, pos, geometry), neighborhood, geometry

    def forward_tokens(self, points: Tensor) -> tuple[Tensor, TokenGeometry]:
        h, _, geometry = self._extract(points)
        return h, geometry

    def pool(self, tokens: Tensor) -> Tensor:
        """``cls_norm``, then [cls output (position 1), max over point tokens]."""
        h = self.blocks.cls_norm(tokens)
        return torch.cat([h[:, 1], h[:, 2:].max(dim=1).values], dim=-1)

    def forward_with_generation(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """The official fine-tuning objective's two parts: (logits (B, classes), generation loss (scalar)).

        The generator reads ``[h_sos, h_t1..h_t(L-1)]`` (before ``cls_norm``) with positions
        ``PE([c_1, unit(c_i - c_(i-1))])`` and predicts every patch in absolute coordinates; the loss is
        Chamfer-L1 + Chamfer-L2. The official total loss is ``CE + 3 * generation_loss``.
        """
        if self.generator_blocks is None:
            raise ValueError("this PointGPT was built with with_generator=False; create it with "
                             "with_generator=True to use the generation branch")
        h, neighborhood, geometry = self._extract(points)
        logits = self.classify(h, geometry)
        centers = geometry.centers
        enc = torch.cat([h[:, :1], h[:, 2:-1]], dim=1)  # (B, L, C)
        steps = centers[:, 1:] - centers[:, :-1]
        directions = steps / steps.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        rel_pos = self.pos_embed(torch.cat([centers[:, :1], directions], dim=1))
        out = self.generator_blocks.run_layers(enc, rel_pos)  # (B, L, C)
        b, length, _ = out.shape
        pred = self.generator_blocks.increase_dim(out.transpose(1, 2)).transpose(1, 2)
        pred = pred.reshape(b * length, POINTS_PER_PATCH, 3)
        target = (neighborhood + centers.unsqueeze(2)).reshape(b * length, -1, 3)
        return logits, chamfer_l1(pred, target) + chamfer_l2(pred, target)
