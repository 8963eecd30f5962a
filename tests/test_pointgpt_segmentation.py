"""The PointGPT-S/B/L part-segmentation models: the official key layout and counts, an official-layout checkpoint of a
reference model (written from the formulas of CGuangyan-BIT/PointGPT ``segmentation/models/pt.py`` and
``gpt2_seg.py``) that loads strictly and gives its log-probabilities, pretrained PointGPT weights that fill everything
before the head, and pcsa / LoRA on it (architectures ``pointgpt_{s,b,l}_seg``)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pointgst
from pointgst.backbones import factory
from pointgst.backbones.pointgpt import SIZES, PointGPT
from pointgst.backbones.pointgpt_segmentation import OFFICIAL_FETCH_LAYERS, PointGPTSegmentation
from pointgst.ops import farthest_point_sample, gather_points, knn_indices

from .official_layout import GPT_SIZES, _bn, _conv, pointgpt_finetune, pointgpt_pretrain
from .segmentation_reference import as_trained, reference_head

NORMAL = (Path(__file__).resolve().parents[2] / "shared" / "data" / "shapenetpart_samples" /
          "shapenetcore_partanno_segmentation_benchmark_v0_normal")
#: official script (segmentation/main.py): (prop_dim, label_dim1, label_dim2) per size
HEAD = {"pointgpt_s": (1024, 512, 256), "pointgpt_b": (2048, 1024, 512), "pointgpt_l": (2048, 1024, 512)}
HEADS = {"pointgpt_s": 6, "pointgpt_b": 12, "pointgpt_l": 16}
#: state-dict entries and parameters with 50 parts and 16 categories
COUNTS = {"pointgpt_s": (261, 34_202_738), "pointgpt_b": (268, 140_826_482), "pointgpt_l": (412, 389_872_498)}
SIZE_PARAMS = ["pointgpt_s", "pointgpt_b", pytest.param("pointgpt_l", marks=pytest.mark.slow)]


def test_the_factory_registers_every_size():
    for size in SIZES:
        assert factory.SEGMENTATION_ARCHITECTURES[size] == f"{size}_seg"
        assert factory.ARCHITECTURES[f"{size}_seg"].func is PointGPTSegmentation


def official_layout(size: str, parts: int = 50, categories: int = 16) -> dict[str, tuple[int, ...]]:
    """The official ``get_model`` keys: the classification layout without ``blocks.cls_head_finetune`` and
    ``blocks.cls_norm``, then the category embedding, the propagation and the per-point head."""
    c = GPT_SIZES[size][0]
    prop, width1, width2 = HEAD[size]
    backbone = {k: v for k, v in pointgpt_finetune(size).items()
                if not k.startswith(("blocks.cls_head_finetune.", "blocks.cls_norm."))}
    return {**backbone, "label_conv.0.weight": (64, categories, 1), **_bn("label_conv.1", 64),
            **_conv("propagation_0.mlp_convs.0", 4 * c, 3 * c + 3), **_bn("propagation_0.mlp_bns.0", 4 * c),
            **_conv("propagation_0.mlp_convs.1", prop, 4 * c), **_bn("propagation_0.mlp_bns.1", prop),
            **_conv("convs1", width1, prop + 6 * c + 64), **_conv("convs2", width2, width1),
            **_conv("convs3", parts, width2), **_bn("bns1", width1), **_bn("bns2", width2)}


def _stack(c: int, depth: int, heads: int) -> nn.Module:
    """The official ``GPT_extractor`` / ``GPT_generator`` parameters: sos, layers, ln_f, increase_dim."""
    stack = nn.Module()
    stack.sos = nn.Parameter(torch.randn(c))
    stack.layers = nn.ModuleList()
    for _ in range(depth):
        layer = nn.Module()
        layer.ln_1, layer.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        layer.attn = nn.MultiheadAttention(c, heads)  # sequence first, as the official blocks
        layer.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
        stack.layers.append(layer)
    stack.ln_f = nn.LayerNorm(c)
    stack.increase_dim = nn.Sequential(nn.Conv1d(c, 96, 1))
    return stack


class ReferenceGPTSegmentation(nn.Module):
    """The official PointGPT segmentation network, written from its formulas with its key names and order."""

    def __init__(self, size: str = "pointgpt_s", parts: int = 50, num_group: int = 128):
        super().__init__()
        c, depth, large = GPT_SIZES[size]
        self.c, self.num_group = c, num_group
        prop, width1, width2 = HEAD[size]
        self.encoder = nn.Module()
        if large:
            self.encoder.first_conv = nn.Sequential(
                nn.Conv1d(3, 256, 1), nn.BatchNorm1d(256), nn.ReLU(), nn.Conv1d(256, 512, 1), nn.BatchNorm1d(512),
                nn.ReLU(), nn.Conv1d(512, 1024, 1))
            hidden = 2048
        else:
            self.encoder.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(),
                                                    nn.Conv1d(128, 256, 1))
            hidden = 512
        self.encoder.second_conv = nn.Sequential(nn.Conv1d(hidden, hidden, 1), nn.BatchNorm1d(hidden), nn.ReLU(),
                                                 nn.Conv1d(hidden, c, 1))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, c))
        self.sos_pos = nn.Parameter(torch.zeros(1, 1, c))
        self.blocks = _stack(c, depth, HEADS[size])
        self.generator_blocks = _stack(c, 4, HEADS[size])
        self.norm = nn.LayerNorm(c)
        self.label_conv = nn.Sequential(nn.Conv1d(16, 64, 1, bias=False), nn.BatchNorm1d(64), nn.LeakyReLU(0.2))
        self.propagation_0 = nn.Module()
        self.propagation_0.mlp_convs = nn.ModuleList([nn.Conv1d(3 * c + 3, 4 * c, 1), nn.Conv1d(4 * c, prop, 1)])
        self.propagation_0.mlp_bns = nn.ModuleList([nn.BatchNorm1d(4 * c), nn.BatchNorm1d(prop)])
        self.convs1 = nn.Conv1d(6 * c + 64 + prop, width1, 1)
        self.convs2, self.convs3 = nn.Conv1d(width1, width2, 1), nn.Conv1d(width2, parts, 1)
        self.bns1, self.bns2 = nn.BatchNorm1d(width1), nn.BatchNorm1d(width2)

    def sine(self, xyz: torch.Tensor) -> torch.Tensor:
        """The sine embedding with temperature 1: per axis, sin on even and cos on odd features, zero-padded."""
        f = self.c // 3 // 2 * 2
        dim_t = 1.0 ** (2 * (torch.arange(f) // 2) / f)
        v = (xyz * 2 * math.pi).unsqueeze(-1) / dim_t
        emb = torch.stack([v[..., 0::2].sin(), v[..., 1::2].cos()], dim=-1).reshape(*xyz.shape[:-1], -1)
        return F.pad(emb, (0, self.c - 3 * f))

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FPS centres, kNN patches, both put in the chain order: from patch 0, the nearest unvisited centre."""
        centers = gather_points(points, farthest_point_sample(points, self.num_group))
        patches = gather_points(points, knn_indices(centers, points, 32)) - centers.unsqueeze(2)
        orders = []
        for sample in centers:
            distance = torch.cdist(sample, sample, compute_mode="donot_use_mm_for_euclid_dist")
            order, left = [0], set(range(1, len(sample)))
            while left:
                candidates = sorted(left)
                order.append(candidates[int(distance[order[-1], candidates].argmin())])
                left.remove(order[-1])
            orders.append(order)
        index = torch.tensor(orders)
        return torch.stack([p[i] for p, i in zip(patches, index)]), torch.stack([c[i] for c, i in zip(centers, index)])

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3), category (B,) -> log-probabilities (B, N, parts), as the official forward returns."""
        b, n, _ = points.shape
        patches, centers = self.group(points)
        g, k = patches.shape[1:3]
        feature = self.encoder.first_conv(patches.reshape(b * g, k, 3).transpose(2, 1))
        feature = torch.cat([feature.max(dim=2, keepdim=True).values.expand(-1, -1, k), feature], dim=1)
        tokens = self.encoder.second_conv(feature).max(dim=2).values.reshape(b, g, -1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1).transpose(0, 1)  # (1+G, B, C)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.sos_pos.expand(b, -1, -1), self.sine(centers)], dim=1)
        pos = pos.transpose(0, 1)
        h = torch.cat([torch.ones(1, b, self.c) * self.blocks.sos, x], dim=0)  # (2+G, B, C)
        mask = torch.triu(torch.full((g + 2, g + 2), -float("inf")), diagonal=1)
        fetched = []
        # every layer runs; ln_f and the generator, whose Chamfer losses the official forward discards, are left out
        for i, layer in enumerate(self.blocks.layers):
            y = layer.ln_1(h + pos)
            y = y + layer.attn(y, y, y, attn_mask=mask, need_weights=False)[0]
            h = y + layer.mlp(layer.ln_2(y))
            if i in (3, 7, 11):
                fetched.append(self.norm(h.transpose(0, 1)[:, 2:]).transpose(1, 2))
        x = torch.cat(fetched, dim=1)  # (B, 3C, G)
        return reference_head(self, x, points, centers, category)


def trained_reference(size: str) -> ReferenceGPTSegmentation:
    """A seeded reference with non-trivial BatchNorm statistics, as after training, in eval mode."""
    torch.manual_seed(3)
    return as_trained(ReferenceGPTSegmentation(size))


def shapes_2048() -> tuple[torch.Tensor, torch.Tensor]:
    """A skateboard and a table (categories 14, 15) of the shared ShapeNetPart samples, 2048 points each drawn with
    replacement and normalised, or two seeded random clouds when the samples are not here."""
    files = [next(iter(sorted((NORMAL / synset).glob("*.txt"))), None) for synset in ("04225987", "04379243")]
    category = torch.tensor([14, 15])
    if None in files or not NORMAL.is_dir():
        return torch.randn(2, 2048, 3, generator=torch.Generator().manual_seed(7)), category
    clouds = []
    for file in files:
        xyz = torch.from_numpy(np.loadtxt(file)[:, :3]).float()
        xyz = xyz - xyz.mean(0)
        xyz = xyz / xyz.norm(dim=1).max()
        clouds.append(xyz[torch.randint(len(xyz), (2048,), generator=torch.Generator().manual_seed(8))])
    return torch.stack(clouds), category


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("size", SIZE_PARAMS)
def test_official_layout_and_counts(size):
    model = PointGPTSegmentation(size)
    state = model.state_dict()
    entries, parameters = COUNTS[size]
    assert len(state) == entries and sum(p.numel() for p in model.parameters()) == parameters
    assert shapes(state) == official_layout(size)
    assert model.architecture == f"{size}_seg" and model.task == "segmentation" and model.num_special_tokens == 2
    reference = ReferenceGPTSegmentation(size)  # the reference has the same keys, in the same (official) order
    assert list(reference.state_dict()) == list(state) and shapes(reference.state_dict()) == shapes(state)
    assert sum(p.numel() for p in reference.parameters()) == parameters


def test_fetch_layers_default_and_official():
    default = PointGPTSegmentation("pointgpt_s")
    assert default.fetch_layers == OFFICIAL_FETCH_LAYERS == (3, 7, 11)
    rates = [getattr(block.drop_path, "drop_prob", 0.0) for block in default.blocks.layers]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)  # official linspace
    model = PointGPTSegmentation("pointgpt_s", fetch_layers=(1, 3, 5))
    assert len(model.transformer_blocks) == 6 and model.transformer_blocks[-1] is model.blocks.layers[5]
    assert "blocks.layers.6." in model.unused_in_forward and "blocks.layers.5." not in model.unused_in_forward
    assert model.lora_target_parameters[-1] == "blocks.layers.5.attn.in_proj_weight"
    assert model.grouping_options["fetch_layers"] == (1, 3, 5) and model.grouping_options["num_categories"] == 16
    with pytest.raises(ValueError, match="ascending distinct block indices"):
        PointGPTSegmentation("pointgpt_s", fetch_layers=(7, 3, 11))
    with pytest.raises(ValueError, match="ascending distinct block indices"):
        PointGPTSegmentation("pointgpt_s", fetch_layers=(3, 7, 12))
    with pytest.raises(ValueError, match="unknown PointGPT size"):
        PointGPTSegmentation("pointgpt_xl")


@pytest.mark.slow
def test_pointgpt_l_fetches_over_its_depth_unless_official():
    assert PointGPTSegmentation("pointgpt_l").fetch_layers == (7, 15, 23)
    official = PointGPTSegmentation("pointgpt_l", fetch_layers=OFFICIAL_FETCH_LAYERS)
    assert len(official.transformer_blocks) == 12 and "blocks.layers.23." in official.unused_in_forward


def check_reference_outputs(size: str, path: Path, fetch_layers: tuple[int, ...] | None = None) -> None:
    reference = trained_reference(size)
    torch.save({"epoch": 7, "class_avg_iou": 0.5, "model_state_dict": reference.state_dict(),
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    options = {} if fetch_layers is None else {"fetch_layers": fetch_layers}
    model = pointgst.create_backbone(f"{size}_seg", pretrained=path, **options).eval()
    assert model.load_report.missing_keys == [] and model.load_report.unexpected_keys == []
    points, category = shapes_2048()
    with torch.no_grad():
        expected = reference(points, category)
        got = F.log_softmax(model(points, category), dim=-1)
    assert got.shape == (2, 2048, 50)
    assert (got - expected).abs().max().item() <= 1e-5


def test_official_checkpoint_loads_strictly_and_gives_the_reference_outputs(tmp_path):
    check_reference_outputs("pointgpt_s", tmp_path / "best_model.pth")


@pytest.mark.slow
@pytest.mark.parametrize("size", ["pointgpt_b", "pointgpt_l"])
def test_official_checkpoint_of_b_and_l_gives_the_reference_outputs(size, tmp_path):
    check_reference_outputs(size, tmp_path / "best_model.pth", OFFICIAL_FETCH_LAYERS)


def pretraining_checkpoint(size: str, path: Path) -> dict[str, torch.Tensor]:
    """A seeded official pretraining checkpoint (``base_model`` of ``GPT_Transformer.`` keys); returns its
    un-prefixed state."""
    generator = torch.Generator().manual_seed(5)
    state = {k: torch.tensor(3) if k.endswith("num_batches_tracked") else
             torch.rand(v, generator=generator) + 0.5 if k.endswith("running_var") else
             torch.randn(v, generator=generator) * (0.05 if k.endswith("weight") and len(v) > 1 else 1.0)
             for k, v in pointgpt_pretrain(size).items()}
    torch.save({"base_model": {f"GPT_Transformer.{k}": v for k, v in state.items()}, "epoch": 300}, path)
    return state


def test_pretrained_weights_fill_everything_before_the_head(tmp_path):
    state = pretraining_checkpoint("pointgpt_s", tmp_path / "pretrain.pth")
    model = pointgst.create_backbone("pointgpt_s", pretrained=tmp_path / "pretrain.pth", task="segmentation")
    assert model.architecture == "pointgpt_s_seg" and model.num_classes == 50
    head = [k for k in model.state_dict() if k.startswith(model.head_prefixes)]
    assert len(head) == 36 and model.load_report.unexpected_keys == []
    assert sorted(model.load_report.missing_keys) == sorted(head + ["cls_token", "cls_pos"])
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    # a fine-tuned classifier fills the cls token and position too; its head and cls_norm are reported, not loaded
    classifier = PointGPT("pointgpt_s", num_classes=15)
    torch.save({"base_model": classifier.state_dict()}, tmp_path / "modelnet.pth")
    model = pointgst.create_backbone("pointgpt_s_seg", pretrained=tmp_path / "modelnet.pth")
    assert sorted(model.load_report.missing_keys) == sorted(head)
    foreign = model.load_report.unexpected_keys
    assert len(foreign) == 18 and all(k.startswith(("blocks.cls_head_finetune.", "blocks.cls_norm.")) for k in foreign)
    assert torch.equal(model.cls_pos, classifier.cls_pos)


def test_special_tokens_take_part_and_pcsa_and_lora_are_exact_at_init(tmp_path):
    pretraining_checkpoint("pointgpt_s", tmp_path / "pretrain.pth")
    torch.manual_seed(0)
    model = pointgst.create_backbone("pointgpt_s_seg", pretrained=tmp_path / "pretrain.pth", num_group=32,
                                     group_size=16, fetch_layers=(1, 3, 5)).eval()
    points, category = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 9])
    with torch.no_grad():
        frozen = model(points, category)
        saved = model.cls_pos.clone()
        model.cls_pos.add_(1.0)
        assert not torch.allclose(model(points, category), frozen)  # the point tokens attend to the cls token
        model.cls_pos.copy_(saved)
        assert torch.equal(model(points, category), frozen)
    wrapped = pointgst.wrap(model, "pcsa").eval()
    with torch.no_grad():
        assert torch.equal(wrapped(points, category), frozen)
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("special_tokens" in n for n in names)  # the adapter's own cls token and position
    adapted = {int(n.split("layers.")[1].split(".")[0]) for n in names if "blocks.layers." in n}
    assert adapted == set(range(6))  # the blocks after the last fetched one are not adapted
    model = wrapped.unload()
    lora = pointgst.wrap(model, "lora").eval()
    with torch.no_grad():
        assert torch.equal(lora(points, category), frozen)
    adapted = {int(n.split("layers.")[1].split(".")[0]) for n, p in lora.named_parameters()
               if p.requires_grad and "lora_" in n}
    assert adapted == set(range(6))
