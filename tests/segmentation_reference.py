"""What the reference segmentation networks of the tests share (written from docs/segmentation.md §1, §6): the
official head on the fetched features, and the drifted BatchNorm statistics of a trained model."""

import torch
import torch.nn.functional as F
from torch import nn


def reference_head(model: nn.Module, fetched: torch.Tensor, points: torch.Tensor, centers: torch.Tensor,
                   category: torch.Tensor) -> torch.Tensor:
    """The official head of ``model`` (its ``label_conv``, ``propagation_0``, ``convs1..3``, ``bns1..2``): fetched
    features (B, F, G) at centers (B, G, 3), points (B, N, 3), category (B,) -> log-probabilities (B, N, parts)."""
    b, n, _ = points.shape
    one_hot = F.one_hot(category, 16).float().unsqueeze(-1)
    global_feature = torch.cat([fetched.max(dim=2).values, fetched.mean(dim=2), model.label_conv(one_hot)[..., 0]],
                               dim=1)
    # PointNet++ propagation with the official squared-distance expansion and a sort
    d2 = -2 * points @ centers.transpose(1, 2) + points.square().sum(-1, keepdim=True) + \
        centers.square().sum(-1).unsqueeze(1)
    d2, index = d2.sort(dim=-1)
    weight = 1.0 / (d2[..., :3] + 1e-8)
    weight = weight / weight.sum(-1, keepdim=True)
    features = fetched.transpose(1, 2)  # (B, G, F)
    gathered = torch.stack([features[i][index[i, :, :3]] for i in range(b)])  # (B, N, 3, F)
    y = torch.cat([points, (gathered * weight.unsqueeze(-1)).sum(2)], dim=-1).transpose(1, 2)
    for conv, norm in zip(model.propagation_0.mlp_convs, model.propagation_0.mlp_bns):
        y = F.relu(norm(conv(y)))
    y = torch.cat([y, global_feature.unsqueeze(-1).expand(-1, -1, n)], dim=1)
    y = F.relu(model.bns1(model.convs1(y)))
    y = F.relu(model.bns2(model.convs2(y)))
    return F.log_softmax(model.convs3(y), dim=1).permute(0, 2, 1)


def as_trained(model: nn.Module) -> nn.Module:
    """``model`` with seeded, non-trivial BatchNorm statistics, as after training, in eval mode."""
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.eval()
