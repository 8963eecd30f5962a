"""DAPT as the official ``PointTransformer_DAPT`` computes it (``docs/peft_methods/dapt.md`` §3), written from the
formulas with the official state-dict keys, for the conversion test in ``tests/test_dapt.py``.

Grouping uses pointgst's FPS (with the official CUDA kernel's skip of near-origin points), kNN and gather ops, which
have their own reference tests; everything after it is explicit: the Conv1d patch encoder, explicit-softmax
attention, the scale-and-shift factors, the dynamic adapter and the internal prompts.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pointgst.ops import farthest_point_sample, gather_points, knn_indices


def add_scale_shift(module: nn.Module, index: int, dim: int) -> None:
    """Give ``module`` the official ``tfts_gamma_<index>`` / ``tfts_beta_<index>`` parameters, (dim,) each."""
    setattr(module, f"tfts_gamma_{index}", nn.Parameter(torch.ones(dim)))
    setattr(module, f"tfts_beta_{index}", nn.Parameter(torch.zeros(dim)))


def scale_shift(module: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
    return x * getattr(module, f"tfts_gamma_{index}") + getattr(module, f"tfts_beta_{index}")


def pool(tokens: torch.Tensor, how: str) -> torch.Tensor:
    return tokens.max(dim=1).values if how == "max" else tokens.mean(dim=1)


class ReferenceDAPT(nn.Module):
    """Point-MAE + DAPT with the official keys. ``head``: the official (class_token, prompt_token, patch_token)."""

    def __init__(self, num_classes: int, num_group: int, *, rank: int, head: tuple[str, str, str], dim: int = 384,
                 depth: int = 12, heads: int = 6, group_size: int = 32):
        super().__init__()
        self.num_group, self.group_size, self.heads, self.head = num_group, group_size, heads, head
        self.encoder = nn.Module()
        self.encoder.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(),
                                                nn.Conv1d(128, 256, 1))
        self.encoder.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                                                 nn.Conv1d(512, dim, 1))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.blocks = nn.Module()
        self.blocks.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            block.attn = nn.Module()
            block.attn.qkv, block.attn.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
            add_scale_shift(block.attn, 1, 3 * dim)
            add_scale_shift(block.attn, 2, dim)
            block.mlp = nn.Module()
            block.mlp.fc1, block.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            add_scale_shift(block.mlp, 1, 4 * dim)
            add_scale_shift(block.mlp, 2, dim)
            block.Adapter_MLP = nn.Module()
            block.Adapter_MLP.adapter_layer_norm_before = nn.LayerNorm(dim)
            block.Adapter_MLP.scale = nn.Linear(dim, 1)
            block.Adapter_MLP.down_proj, block.Adapter_MLP.up_proj = nn.Linear(dim, rank), nn.Linear(rank, dim)
            for index in (1, 2, 3):
                add_scale_shift(block, index, dim)
            self.blocks.blocks.append(block)
        self.norm = nn.LayerNorm(dim)
        add_scale_shift(self, 1, dim)
        add_scale_shift(self, 2, dim)
        parts = sum(h != "None" for h in head)
        self.cls_head_finetune = nn.Sequential(nn.Linear(parts * dim, 256), nn.BatchNorm1d(256), nn.ReLU(),
                                               nn.Dropout(0.5), nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(),
                                               nn.Dropout(0.5), nn.Linear(256, num_classes))

    def attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = scale_shift(attn, 1, attn.qkv(x))
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return scale_shift(attn, 2, attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c)))

    def block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(block.attn, scale_shift(block, 1, block.norm1(x)))
        h = scale_shift(block, 2, block.norm2(x))
        adapter = block.Adapter_MLP
        a = adapter.adapter_layer_norm_before(h)
        adapted = adapter.up_proj(F.gelu(adapter.down_proj(a))) * F.relu(adapter.scale(a))
        mlp = scale_shift(block.mlp, 2, block.mlp.fc2(F.gelu(scale_shift(block.mlp, 1, block.mlp.fc1(h)))))
        x = x + mlp + adapted
        prompt = scale_shift(block, 3, F.gelu(adapted).mean(dim=1, keepdim=True))
        return torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        centers = gather_points(points, farthest_point_sample(points, self.num_group, skip_near_origin=True))
        patches = gather_points(points, knn_indices(centers, points, self.group_size)) - centers.unsqueeze(2)
        b, g, k, _ = patches.shape
        feature = self.encoder.first_conv(patches.reshape(b * g, k, 3).transpose(2, 1))
        feature = torch.cat([feature.max(dim=2, keepdim=True).values.expand(-1, -1, k), feature], dim=1)
        tokens = scale_shift(self, 1, self.encoder.second_conv(feature).max(dim=2).values.reshape(b, g, -1))
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        x = x + torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)  # once, at the input
        for block in self.blocks.blocks:
            x = self.block(block, x)
        x = scale_shift(self, 2, self.norm(x))
        class_token, prompt_token, patch_token = self.head
        features = [x[:, 0]] if class_token != "None" else []
        if prompt_token != "None":
            features.append(pool(x[:, 1:-self.num_group], prompt_token))
        if patch_token != "None":
            features.append(pool(x[:, -self.num_group:], patch_token))
        return self.cls_head_finetune(torch.cat(features, dim=-1))


def as_trained(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every tensor non-trivial, as after official training: seeded noise on every weight
    (the zero-initialised up projections, biases and shifts too), drifted BatchNorm statistics."""
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def trained_reference(num_classes: int, num_group: int, *, rank: int, head: tuple[str, str, str],
                      **sizes: int) -> ReferenceDAPT:
    """A Point-MAE reference model as after official training (:func:`as_trained`), in eval mode."""
    torch.manual_seed(5)
    return as_trained(ReferenceDAPT(num_classes, num_group, rank=rank, head=head, **sizes))
