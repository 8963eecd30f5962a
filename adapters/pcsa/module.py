"""Point Cloud Spectral Adapter (PCSA), the tunable module of PointGST (``docs/official.md``, "PCSA")."""

from __future__ import annotations

from torch import Tensor, nn

from pointgst.geometry import TokenGeometry
from pointgst.spectral import SpectralOptions


class PCSA(nn.Module):
    """Low-rank adapter that mixes the point tokens in the global and local graph-spectral domains.

    Runs parallel to a block's MLP sublayer and returns an additive correction. Submodule names match the
    official ``gft_adapter`` so state-dict keys are ``{down,up,adapt1,norm_ly1,norm_ly2}.{weight,bias}``.
    ``up`` and ``adapt1`` start at zero, so the output is exactly zero at initialisation.

    Args:
        dim: token width d.
        rank: bottleneck width r (36 in every official config).
        spectral: how the graphs of the token centres and their bases are built (read from the token geometry,
            which computes each basis once per forward for every adapter that asks for it).
    """

    def __init__(self, dim: int, rank: int = 36, spectral: SpectralOptions = SpectralOptions()) -> None:
        super().__init__()
        self.dim = dim
        self.rank = rank
        self.spectral = spectral
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.adapt1 = nn.Linear(rank, rank)  # shared by the global and the local branch
        self.norm_ly1 = nn.LayerNorm(rank)  # global branch
        self.norm_ly2 = nn.LayerNorm(rank)  # local branch
        self.act = nn.SiLU()
        self.scale = 1.0
        nn.init.xavier_uniform_(self.down.weight)  # down.bias keeps PyTorch's default init
        for layer in (self.up, self.adapt1):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, geometry: TokenGeometry) -> Tensor:
        """(B, T, d) tokens -> (B, T, d) correction.

        The last ``G = geometry.num_points`` tokens are point tokens; the leading ``T - G`` are special tokens
        (cls, or sos + cls), which only get ``up(SiLU(down(x)))``.
        """
        basis = geometry.spectral_basis(self.spectral)
        g = basis.num_nodes
        if x.ndim != 3 or x.shape[-1] != self.dim or x.shape[1] < g:
            raise ValueError(
                f"expected tokens of shape (B, T >= G={g}, d={self.dim}), got {tuple(x.shape)}; the last G tokens "
                "must be the point tokens whose centres built the spectral basis"
            )
        h = self.down(x)
        s = h[:, -g:]  # point tokens, before the activation
        a = self.act(h)
        f_global = basis.to_spectral_global(s)  # (B, G, r)
        s_global = basis.from_spectral_global(f_global + self.act(self.adapt1(self.norm_ly1(f_global))))
        f_local = basis.to_spectral_local(s)  # (B, m, k, r)
        s_local = basis.from_spectral_local(f_local + self.act(self.adapt1(self.norm_ly2(f_local))))
        a[:, -g:] += s_global + s_local  # in place: SiLU's backward reads its input, not its output
        out = self.up(a)
        return out if self.scale == 1.0 else out * self.scale

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, scale={self.scale}, spectral={self.spectral}"
