"""DAPT as the official ``PointTransformer_DAPT`` computes it (``docs/peft_methods/dapt.md`` §3), written from the
formulas with the official state-dict keys, for the conversion test in ``tests/test_dapt.py``.

The Point-MAE parts (grouping, Conv1d patch encoder, blocks, explicit-softmax attention, head) are those of
``tests/official_point_mae.py``; what DAPT adds is explicit: the scale-and-shift factors, the dynamic adapter and the
internal prompts.
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import official_point_mae as mae


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
        self.encoder = mae.official_encoder(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = mae.official_pos_embed(dim)

        def add_dapt(block: nn.Module) -> None:
            add_scale_shift(block.attn, 1, 3 * dim)
            add_scale_shift(block.attn, 2, dim)
            add_scale_shift(block.mlp, 1, 4 * dim)
            add_scale_shift(block.mlp, 2, dim)
            block.Adapter_MLP = nn.Module()
            block.Adapter_MLP.adapter_layer_norm_before = nn.LayerNorm(dim)
            block.Adapter_MLP.scale = nn.Linear(dim, 1)
            block.Adapter_MLP.down_proj, block.Adapter_MLP.up_proj = nn.Linear(dim, rank), nn.Linear(rank, dim)
            for index in (1, 2, 3):
                add_scale_shift(block, index, dim)

        self.blocks = mae.official_blocks(dim, depth, add_dapt)
        self.norm = nn.LayerNorm(dim)
        add_scale_shift(self, 1, dim)
        add_scale_shift(self, 2, dim)
        self.cls_head_finetune = mae.official_head(sum(h != "None" for h in head) * dim, num_classes)

    def attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Explicit-softmax attention with the scale-and-shift factors after ``qkv`` and after ``proj``."""
        return scale_shift(attn, 2, attn.proj(mae.softmax_attention(scale_shift(attn, 1, attn.qkv(x)), self.heads)))

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
        tokens, centers = mae.group_and_encode(self.encoder, points, self.num_group, self.group_size)
        tokens, b = scale_shift(self, 1, tokens), points.shape[0]
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
