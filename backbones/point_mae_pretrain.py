"""Point-MAE masked-autoencoder pretraining model, key-for-key with the official ``Point_MAE`` (209 state-dict
entries, 29,006,432 parameters): its ``state_dict()`` is a pretraining checkpoint that :func:`create_backbone`
loads like the authors' file (``MAE_encoder.`` stripped, decoder keys reported as unexpected)."""

import torch
from torch import Tensor, nn

from pointgst.losses import chamfer_l2
from pointgst.validation import model_input

from .grouping import PatchGrouper
from .layers import PatchEncoder
from .point_mae import TINY_OPTIONS, TransformerEncoder


class MaskedEncoder(nn.Module):
    """The official ``MAE_encoder``: patch encoder, positional MLP, blocks and norm over the visible tokens."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, drop_path_rate: float,
                 encoder_widths: tuple[int, int]):
        super().__init__()
        self.encoder = PatchEncoder(embed_dim, widths=encoder_widths)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        self.blocks = TransformerEncoder(embed_dim, depth, num_heads, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, neighborhood: Tensor, centers: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """neighborhood (B, G, K, 3), centers (B, G, 3), mask (B, G) bool (True = hidden, the same count per
        sample) -> (visible tokens (B, V, C), visible centres (B, V, 3))."""
        b, visible = mask.shape[0], ~mask
        tokens = self.encoder(neighborhood)
        tokens = tokens[visible].reshape(b, -1, tokens.shape[-1])
        vis_centers = centers[visible].reshape(b, -1, 3)
        return self.norm(self.blocks(tokens, self.pos_embed(vis_centers))), vis_centers


class MaskedDecoder(nn.Module):
    """The official ``MAE_decoder``: blocks (positions re-added before each) and a norm over the last M tokens."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = TransformerEncoder(embed_dim, depth, num_heads, drop_path_rate=0.0).blocks
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, pos: Tensor, num_masked: int) -> Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x[:, -num_masked:])


#: architecture -> its pretraining model's options (``point_mae_tiny`` also halves the decoder)
PRETRAIN_ARCHITECTURES: dict[str, dict] = {"point_mae": {}, "point_mae_tiny": {**TINY_OPTIONS, "decoder_depth": 2}}


class PointMAEPretrain(nn.Module):
    """Point-MAE pretraining: hide ``mask_ratio`` of the patches at random, encode the visible ones, decode all and
    reconstruct the hidden patches (centre-relative, ``group_size`` points each), Chamfer-L2 loss.

    ``forward(points (B, N, 3)) -> loss`` (scalar). ``state_dict()`` is in the official pretraining layout.
    """

    def __init__(self, *, num_group: int = 64, group_size: int = 32, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, drop_path_rate: float = 0.1, decoder_depth: int = 4, mask_ratio: float = 0.6,
                 encoder_widths: tuple[int, int] = (128, 256), architecture: str = "point_mae"):
        super().__init__()
        self.architecture = architecture
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.group_divider = PatchGrouper(num_group, group_size)
        self.MAE_encoder = MaskedEncoder(embed_dim, depth, num_heads, drop_path_rate, tuple(encoder_widths))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        self.MAE_decoder = MaskedDecoder(embed_dim, decoder_depth, num_heads)
        self.increase_dim = nn.Sequential(nn.Conv1d(embed_dim, 3 * group_size, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-2.0, b=2.0)

    @classmethod
    def for_architecture(cls, architecture: str, **options) -> "PointMAEPretrain":
        """The pretraining model of ``architecture`` (:data:`PRETRAIN_ARCHITECTURES`); ``options`` override."""
        if architecture not in PRETRAIN_ARCHITECTURES:
            raise ValueError(f"no pretraining model for {architecture!r}; choose one of "
                             f"{', '.join(PRETRAIN_ARCHITECTURES)}")
        return cls(**{**PRETRAIN_ARCHITECTURES[architecture], **options}, architecture=architecture)

    def random_mask(self, batch: int, groups: int, generator: torch.Generator | None = None,
                    device: torch.device | None = None) -> Tensor:
        """(B, G) bool, True on ``int(mask_ratio * G)`` randomly chosen patches of every sample."""
        hidden = int(self.mask_ratio * groups)
        scores = torch.rand(batch, groups, generator=generator, device=generator.device if generator else device)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return (ranks < hidden).to(device)

    def forward(self, points: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """points (B, N, 3) -> Chamfer-L2 reconstruction loss of the hidden patches (scalar)."""
        points = model_input(points, min_points=self.group_divider.min_points, dtype=self.mask_token.dtype,
                             training=self.training)
        neighborhood, centers = self.group_divider(points)
        b, g = centers.shape[:2]
        mask = self.random_mask(b, g, generator, points.device)
        x_vis, vis_centers = self.MAE_encoder(neighborhood, centers, mask)
        masked_centers = centers[mask].reshape(b, -1, 3)
        num_masked = masked_centers.shape[1]
        x = torch.cat([x_vis, self.mask_token.expand(b, num_masked, -1)], dim=1)
        pos = torch.cat([self.decoder_pos_embed(vis_centers), self.decoder_pos_embed(masked_centers)], dim=1)
        decoded = self.MAE_decoder(x, pos, num_masked)  # (B, M, C)
        rebuilt = self.increase_dim(decoded.transpose(1, 2)).transpose(1, 2).reshape(b * num_masked, -1, 3)
        target = neighborhood[mask].reshape(b * num_masked, -1, 3)
        return chamfer_l2(rebuilt, target)
