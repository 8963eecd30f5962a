"""A reference IDPT model for the conversion test, written here from the formulas of ``docs/peft_methods/idpt.md``
§2 in the official key layout (the ``PointTransformer`` of the official IDPT code with ``prompt_module: dgcnn``).

Grouping uses pointgst's ops (FPS with the CUDA kernel's near-origin skip, kNN, gather), which have their own
reference tests; everything else is explicit: the Conv1d patch encoder, softmax attention, the prompt inserted before
block ``prompt_layer``, and the DGCNN generator on edge features ``[x_j - x_i, x_i]`` of feature-space kNN graphs, its
BatchNorms registered twice (as ``bnN`` and inside ``convN``) as in the official module, so that the state dict holds
both names.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pointgst.ops import farthest_point_sample, gather_points, knn_indices

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
        self.encoder = nn.Module()
        self.encoder.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(),
                                                nn.Conv1d(128, 256, 1))
        self.encoder.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                                                 nn.Conv1d(512, dim, 1))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.prompt_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.blocks = nn.Module()
        self.blocks.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            block.attn = nn.Module()
            block.attn.qkv, block.attn.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
            block.mlp = nn.Module()
            block.mlp.fc1, block.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.blocks.blocks.append(block)
        self.blocks.cls = ReferenceGenerator(dim)
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(len(self.parts) * dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, num_classes))

    def attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = attn.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        centers = gather_points(points, farthest_point_sample(points, self.num_group, skip_near_origin=True))
        patches = gather_points(points, knn_indices(centers, points, 32)) - centers.unsqueeze(2)
        b, g, k, _ = patches.shape
        feature = self.encoder.first_conv(patches.reshape(b * g, k, 3).transpose(2, 1))
        feature = torch.cat([feature.max(dim=2, keepdim=True).values.expand(-1, -1, k), feature], dim=1)
        tokens = self.encoder.second_conv(feature).max(dim=2).values.reshape(b, g, -1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)
        for index, block in enumerate(self.blocks.blocks):
            if index == self.prompt_layer:
                prompt = self.blocks.cls(x[:, -g:].transpose(1, 2))
                x = torch.cat([x[:, :1], prompt, x[:, -g:]], dim=1)
                pos = torch.cat([pos[:, :1], self.prompt_pos.expand(b, -1, -1), pos[:, -g:]], dim=1)
            x = x + pos
            x = x + self.attention(block.attn, block.norm1(x))
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
