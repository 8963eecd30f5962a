"""DCNv4-style deformable aggregation over point tokens, the ``dcnv4`` method's module (``docs/methods.md``,
"Deformable point layer": pointgst's design after DCNv4, not a published method)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry
from pointgst.ops import gather_points, knn_indices
from pointgst.validation import check_int


class DeformablePointLayer(nn.Module):
    """DCNv4-style deformable aggregation over point tokens (a design, not a published method).

    A parallel tunable module: called as ``layer(x, geometry)`` on a block's sublayer input, it returns an additive
    correction. For point token i with centre ``p_i``, bottleneck value ``v_i = W_v x_i`` (``hidden`` channels in
    ``groups`` groups of ``D = hidden / groups``):

    * references ``ref_ik``: the ``num_points`` (K) nearest token centres of ``p_i``, itself included (the 3x3 window);
    * scale ``sigma_i``: mean distance from ``p_i`` to those K centres (the "pixel" unit of the offsets);
    * ``[delta, m]_i = W_om v_i + b_om``: ONE Linear, per group ``3K`` offsets interleaved ``(dx, dy, dz)`` then ``K``
      modulation scalars (DCNv4's layout with 3-D offsets); no softmax on ``m``;
    * ``q_igk = p_i + s ((ref_ik - p_i) + sigma_i delta_igk)`` (``s = offset_scale`` scales the reference displacement
      and the offset, as DCNv4's ``offset_scale`` scales grid and offset; ``s = 1``: ``ref_ik + sigma_i delta_igk``);
    * ``f_g(q)``: inverse-distance interpolation of group g's values from the 3 nearest centres of q (PointNet++
      feature propagation): ``w_j = 1 / (|q - p_j|^2 + eps sigma_i^2)``, normalised (the relative ``eps`` guards zero
      distances scale-free; a tiny absolute floor keeps fully coincident neighbourhoods finite);
    * ``a_ig = sum_k m_igk f_g(q_igk)``; ``y_i = W_o [a_i1 ... a_iG] + b_o``.

    The geometry (references, sigma, neighbour selection) is computed from the token geometry's normalised centres
    (:meth:`TokenGeometry.normalized_centers`: the same ratios of distances at any input scale, no overflow of
    squared distances): it is input, never trained. Offsets and modulation are predicted from the bottleneck ``v_i``
    rather than from ``x_i`` (``W_om`` factored as C -> hidden -> 4GK with the first factor shared with ``W_v``),
    which keeps the layer at PCSA's budget. Special tokens (the leading ``T - G`` tokens: cls, or sos + cls) get
    exactly zero.

    Initialisation (DCNv4's): ``offset_mask`` weight and bias zero (offsets and masks zero), ``value_proj`` and
    ``output_proj`` Xavier-uniform weights with zero biases. An untrained layer therefore adds exactly zero, while the
    modulation part of ``offset_mask`` receives a non-zero gradient at step 0 (the output projection is deliberately
    not zeroed: zeroing both factors would leave every gradient zero). Offsets receive gradient once the masks are
    non-zero; at exactly zero offset each sampling point sits on a centre, where inverse-distance interpolation is
    flat up to O(eps), so offsets start slowly (Adam's normalised steps move them; plain SGD barely does).

    Parameters: ``(C r + r) + (r 4GK + 4GK) + (r C + C)`` = ``2 C r + r + C + 4 G K (r + 1)`` with C = ``dim``,
    r = ``hidden``, G = ``groups``, K = ``num_points``. Defaults (r = 32, G = 4, K = 9, a 3x3-window analogue with
    8-channel groups): 29,744 for C = 384, on a par with PCSA (29,544 at rank 36); 357k for 12 blocks.

    Args:
        dim: token width C.
        hidden: bottleneck width r (values and predictor input), a multiple of ``groups``.
        groups: G, groups of channels sharing one set of offsets and modulation scalars.
        num_points: K sampling points per group (reference centres per token), at most the number of point tokens.
        offset_scale: s, see above.
        eps: relative guard of the interpolation weights (in units of ``sigma_i^2``). It trades exactness at a centre
            against slope there: at 1e-4 a sample on a centre takes ~3e-4 of its value from the two other neighbours.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 32,
        groups: int = 4,
        num_points: int = 9,
        offset_scale: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        for name, number in (("dim", dim), ("hidden", hidden), ("groups", groups), ("num_points", num_points)):
            check_int(name, number, 1)
        if hidden % groups:
            raise ValueError(f"hidden must be divisible by groups, got hidden={hidden} and groups={groups}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.dim = dim
        self.hidden = hidden
        self.groups = groups
        self.num_points = num_points
        self.offset_scale = offset_scale
        self.eps = eps
        self.value_proj = nn.Linear(dim, hidden)
        self.offset_mask = nn.Linear(hidden, groups * num_points * 4)
        self.output_proj = nn.Linear(hidden, dim)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, geometry: TokenGeometry) -> Tensor:
        """``(B, T, C)`` tokens whose last G are the point tokens of ``geometry`` -> ``(B, T, C)`` correction.

        The leading ``T - G`` (special) tokens get zero; every sample only sees its own centres.
        """
        if x.dim() != 3 or x.shape[-1] != self.dim or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point (B, T, C={self.dim}) tensor, got {x.dtype} {tuple(x.shape)}")
        batch, t, _ = x.shape
        g = geometry.num_points
        if geometry.batch_size != batch or not self.num_points <= g <= t:
            raise ValueError(
                f"need the geometry of the same batch (B={batch}, got {geometry.batch_size}) and num_points="
                f"{self.num_points} <= G <= T={t} point tokens, got G={g}; the last G tokens must be the point tokens "
                "of the geometry"
            )
        k, heads, d = self.num_points, self.groups, self.hidden // self.groups
        p = geometry.normalized_centers().to(x.dtype)

        # Geometry: references, local scale, displaced positions (B, G, heads, K, 3).
        ref = gather_points(p, geometry.knn(k))  # (B, G, K, 3)
        sigma = (ref - p[:, :, None]).norm(dim=-1).mean(-1)  # (B, G)
        v = self.value_proj(x[:, t - g :])  # (B, G, r)
        om = self.offset_mask(v).view(batch, g, heads, 4 * k)
        offsets = om[..., : 3 * k].reshape(batch, g, heads, k, 3)
        mask = om[..., 3 * k :]  # (B, G, heads, K)
        s = self.offset_scale
        q = (s * ref + (1 - s) * p[:, :, None])[:, :, None] + (s * sigma)[..., None, None, None] * offsets

        # Inverse-distance weights over the 3 nearest centres of every q (selection is piecewise constant).
        q = q.reshape(batch, g * heads * k, 3)
        near = knn_indices(q, p, min(3, g))  # (B, M, 3)
        dist2 = (q[:, :, None] - gather_points(p, near)).square().sum(-1)
        guard = (self.eps * sigma.square()).repeat_interleave(heads * k, dim=1)[..., None]
        den = dist2 + guard + torch.finfo(x.dtype).tiny ** 0.5
        inv = den.amin(-1, keepdim=True).detach() / den  # in (0, 1]; normalised below, so the scale drops out
        weight = inv / inv.sum(-1, keepdim=True)

        # a[b, i, h] = sum_{k, j} m[b, i, h, k] w[b, i, h, k, j] v[b, near[b, i, h, k, j], h]
        coeff = (mask[..., None] * weight.view(batch, g, heads, k, -1)).transpose(1, 2).reshape(batch, heads, g, -1)
        index = near.view(batch, g, heads, -1).transpose(1, 2).reshape(batch, heads, -1, 1).expand(-1, -1, -1, d)
        values = v.view(batch, g, heads, d).transpose(1, 2)  # (B, heads, G, D)
        sampled = values.gather(2, index).view(batch, heads, g, -1, d)
        a = torch.einsum("bhin,bhind->bhid", coeff, sampled).transpose(1, 2).reshape(batch, g, self.hidden)
        y = self.output_proj(a)
        return torch.cat([y.new_zeros(batch, t - g, self.dim), y], dim=1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden={self.hidden}, groups={self.groups}, num_points={self.num_points}, "
            f"offset_scale={self.offset_scale}, eps={self.eps}"
        )
