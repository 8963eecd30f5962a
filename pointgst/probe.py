"""Linear probe: how linearly separable a frozen backbone's features are (``pointgst probe``).

Each cloud's feature is what the backbone's head reads (:meth:`PointBackbone.pool` of the final tokens, eval mode,
(B, F)); a multinomial logistic regression with L2 penalty is fitted on the standardised training features by
full-batch L-BFGS and scored on the test split. Everything is deterministic on CPU, so the figures reproduce exactly.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pointgst.data import build_dataset
from pointgst.recipe import DATASET_CLASSES
from pointgst.training.evaluate import scores_from


@dataclass
class ProbeResult:
    """Test accuracy and mean class accuracy (fractions) of a linear probe, with the sizes it was fitted on."""

    acc: float
    macc: float
    train_count: int
    test_count: int
    feature_dim: int

    def __str__(self) -> str:
        return (f"linear probe: test accuracy {100 * self.acc:.2f}%, mean class accuracy {100 * self.macc:.2f}% "
                f"({self.train_count} training / {self.test_count} test clouds, {self.feature_dim} features)")


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, dataset: Dataset, *, batch_size: int = 64,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (M, F), labels (M,))`` of every cloud of ``dataset`` (items ``(points (N, 3), label)``)."""
    from tqdm import tqdm

    backbone.eval()
    features, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for points, label in tqdm(loader, desc="features", unit="batch", disable=not progress, leave=False):
        tokens, _ = backbone.forward_tokens(points)
        features.append(backbone.pool(tokens).float())
        labels.append(label)
    return torch.cat(features), torch.cat(labels)


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                            weight_decay: float = 1e-3, max_iter: int = 500) -> torch.nn.Linear:
    """Multinomial logistic regression ``(M, F) -> (M, num_classes)`` with an L2 penalty on the weights, fitted by
    full-batch L-BFGS from zero (a convex problem: the optimum does not depend on a seed)."""
    model = torch.nn.Linear(features.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
    x, y = features.double(), labels
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def linear_probe(backbone: torch.nn.Module, train: Dataset, test: Dataset, num_classes: int, *,
                 weight_decay: float = 1e-3, progress: bool = False) -> ProbeResult:
    """Fit a linear classifier on ``backbone``'s frozen features of ``train`` and score it on ``test``."""
    train_x, train_y = extract_features(backbone, train, progress=progress)
    test_x, test_y = extract_features(backbone, test, progress=progress)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    classifier = fit_logistic_regression((train_x - mean) / std, train_y, num_classes, weight_decay=weight_decay)
    with torch.no_grad():
        logits = classifier(((test_x - mean) / std).double())
    scores = scores_from(logits.float(), test_y, num_classes)
    return ProbeResult(scores.acc, scores.macc, len(train_y), len(test_y), train_x.shape[1])


def probe_modelnet_pack(backbone: torch.nn.Module, root: str, *, dataset: str = "modelnet40",
                        progress: bool = False) -> ProbeResult:
    """:func:`linear_probe` on the train / test splits of a ModelNet ``.npz`` pack (``modelnet40``, or its
    ``modelnet10`` rows), both in stored point order."""
    data = {"dataset": dataset, "root": root, "format": "npz", "shuffle_points": False}
    return linear_probe(backbone, build_dataset(data, "train"), build_dataset(data, "test"), DATASET_CLASSES[dataset],
                        progress=progress)
