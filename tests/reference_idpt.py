"""A reference IDPT model for the conversion test, written here from the formulas of ``docs/peft_methods/idpt.md``
§2 in the official key layout (the ``PointTransformer`` of the official IDPT code with ``prompt_module: dgcnn``).

The Point-MAE parts (grouping, Conv1d patch encoder, blocks, softmax attention, head) are those of
``tests/official_point_mae.py``; what IDPT adds is explicit: the prompt inserted before block ``prompt_layer``, and
the DGCNN generator on edge features ``[x_j - x_i, x_i]`` of feature-space kNN graphs, its BatchNorms registered twice
(as ``bnN`` and inside ``convN``) as in the official module, so that the state dict holds both names.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pointgst.ops import gather_points

from . import official_point_mae as mae

#: official cls_type -> the parts of the final tokens the head reads
CLS_TYPES = {"all": ("cls", "prompt", "max"), "promptonly": ("prompt",), "promptcls": ("cls", "prompt"),
             "pointcls": ("cls", "max")}


def edge_features(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (B, C, G) -> edge features (B, 2C, G, k): ``[x_j - x_i, x_i]`` over the k largest ``-|x_i - x_j|^2``
    (expanded form, token itself included)."""
    squares = (x ** 2).sum(dim=1, keepdim=True)  # (B, 1, G)
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    neighbours = (-squares - inner - squares.transpose(2, 1)).topk(k, dim=-1).indices  # (B, G, k)
    points = x.transpose(1, 2)
    gathered = gather_points(points, neighbours)  # (B, G, k, C)
    centre = points.unsqueeze(2).expand(-1, -1, k, -1)
    return torch.cat([gathered - centre, centre], dim=-1).permute(0, 3, 1, 2)


class ReferenceGenerator(nn.Module):
    """The DGCNN prompt generator in the official layout: three edge convolutions, a fusing convolution, max."""

    def __init__(self, dim: int, k: int = 20):
        super().__init__()
        self.k = k
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.bn5 = nn.BatchNorm1d(dim)
        self.conv1 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), self.bn1, nn.LeakyReLU(0.2))
        self.conv2 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), self.bn2, nn.LeakyReLU(0.2))
        self.conv3 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), self.bn3, nn.LeakyReLU(0.2))
        self.conv5 = nn.Sequential(nn.Conv1d(3 * dim, dim, 1, bias=False), self.bn5, nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """point tokens (B, C, G) -> prompt (B, 1, C)."""
        x1 = self.conv1(edge_features(x, self.k)).max(dim=-1).values
        x2 = self.conv2(edge_features(x1, self.k)).max(dim=-1).values
        x3 = self.conv3(edge_features(x2, self.k)).max(dim=-1).values
        return self.conv5(torch.cat([x1, x2, x3], dim=1)).max(dim=-1).values.unsqueeze(1)


class ReferenceIDPT(nn.Module):
    """Point-MAE + IDPT as the official ``PointTransformer`` computes it in eval mode, with its state-dict keys."""

    def __init__(self, num_classes: int, num_group: int, prompt_layer: int, cls_type: str, dim: int = 384,
                 depth: int = 12, heads: int = 6):
        super().__init__()
        self.num_group, self.heads, self.prompt_layer = num_group, heads, prompt_layer
        self.parts = CLS_TYPES[cls_type]
        self.encoder = mae.official_encoder(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.prompt_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = mae.official_pos_embed(dim)
        self.blocks = mae.official_blocks(dim, depth)
        self.blocks.cls = ReferenceGenerator(dim)
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = mae.official_head(len(self.parts) * dim, num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        tokens, centers = mae.group_and_encode(self.encoder, points, self.num_group)
        b, g = tokens.shape[:2]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)
        for index, block in enumerate(self.blocks.blocks):
            if index == self.prompt_layer:
                prompt = self.blocks.cls(x[:, -g:].transpose(1, 2))
                x = torch.cat([x[:, :1], prompt, x[:, -g:]], dim=1)
                pos = torch.cat([pos[:, :1], self.prompt_pos.expand(b, -1, -1), pos[:, -g:]], dim=1)
            x = x + pos
            x = x + mae.explicit_attention(block.attn, block.norm1(x), self.heads)
            x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))
        x = self.norm(x)
        parts = {"cls": x[:, 0], "prompt": x[:, 1], "max": x[:, 2:].max(dim=1).values}
        return self.cls_head_finetune(torch.cat([parts[p] for p in self.parts], dim=-1))


def trained_reference(num_classes: int, num_group: int, prompt_layer: int, cls_type: str) -> ReferenceIDPT:
    """A reference model in eval mode with every tensor non-trivial, as after official training: random tokens and
    positions, norm weights away from 1 and biases from 0, drifted BatchNorm statistics (the generator's too)."""
    torch.manual_seed(7)
    model = ReferenceIDPT(num_classes, num_group, prompt_layer, cls_type)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.fill_(1000)  # num_batches_tracked
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or name in ("cls_token", "cls_pos", "prompt_pos"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.ndim == 1:  # norm weights and every bias
                base = 1.0 if name.endswith("weight") else 0.0
                tensor.copy_(base + torch.randn(tensor.shape, generator=generator) * 0.1)
    return model.eval()
