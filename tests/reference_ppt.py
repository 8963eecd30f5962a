"""PPT as its official code computes it (``docs/peft_methods/ppt.md`` §2-§4), written from the formulas in the official
key layout, for the fidelity tests of ``tests/test_ppt.py``.

The Point-MAE part (encoder, blocks, explicit-softmax attention) is ``ReferencePointGST``'s without its adapters. What
PPT adds is written here in the official order: a second grouping of the cloud (its own FPS and kNN) and a second
pass of the patch encoder for the prompt tokens, the prompt MLPs applied in place to slices of the sequence before
every block, ``prompt_all_mlp`` beside the FFN, and the GELU head on ``[cls, mean, mean]``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import official_point_mae as mae
from .test_official_pointgst import ReferencePointGST

#: the official trainable rule: a parameter trains when its name holds one of these (``docs/peft_methods/ppt.md`` §3)
OFFICIAL_TRAINABLE = ("cls", "prompt", "first_conv", "pos_embed")


def official_mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class ReferencePPT(ReferencePointGST):
    """The official PPT ``PointTransformer`` (Point-MAE width 384, 12 blocks) with its state-dict keys."""

    def __init__(self, num_classes: int, num_group: int, prompt_groups: int, dim: int = 384, hidden: int = 256):
        super().__init__(num_classes, num_group, dim=dim)
        self.prompt_groups = prompt_groups
        for block in self.blocks.blocks:
            del block.gft_adapter
        self.blocks.prompt_mlp = official_mlp(dim, hidden)
        self.blocks.prompt_pos_mlp = official_mlp(dim, hidden)
        self.blocks.prompt_all_mlp = official_mlp(dim, hidden)
        self.cls_head_finetune = mae.official_head(3 * dim, num_classes, activation=nn.GELU)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        g, p = self.num_group, self.prompt_groups
        tokens, centers = mae.group_and_encode(self.encoder, points, g)
        prompt_tokens, prompt_centers = mae.group_and_encode(self.encoder, points, p)  # the official second Group
        b = points.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens, prompt_tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers), self.pos_embed(prompt_centers)],
                        dim=1)
        stack = self.blocks
        for block in stack.blocks:
            x = x + pos
            x[:, 1:g + 1] = x[:, 1:g + 1] + stack.prompt_mlp(x[:, 1:g + 1])
            x[:, -p:] = x[:, -p:] + stack.prompt_pos_mlp(x[:, -p:])
            x = x + mae.explicit_attention(block.attn, block.norm1(x), self.heads)
            beside = stack.prompt_all_mlp(x)
            x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x)))) + beside
        x = self.norm(x)
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:g + 1].mean(dim=1), x[:, -p:].mean(dim=1)], dim=-1))


def trained_reference(num_classes: int, num_group: int, prompt_groups: int) -> ReferencePPT:
    """A reference with every tensor non-trivial, as after official training: each one redrawn from a seeded
    generator (the cls token, the BatchNorm affine parameters and statistics and the step counters too)."""
    torch.manual_seed(7)
    model = ReferencePPT(num_classes, num_group, prompt_groups)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(1234)
            elif name.endswith("running_var") or (name.endswith(".weight") and tensor.ndim == 1):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)  # BN / LayerNorm scales, variances
            elif name.endswith("running_mean") or tensor.ndim == 1 or name in ("cls_token", "cls_pos"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)  # biases, means, cls token
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5)
    return model.eval()
