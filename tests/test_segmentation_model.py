"""The Point-MAE part-segmentation model: the official key layout and counts, an official-layout checkpoint that loads
strictly and gives the reference model's outputs, pretrained backbone weights that fill it, and the tuning methods
on it (docs/segmentation.md §1)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pointgst
from pointgst.backbones import factory
from pointgst.backbones.segmentation import PointMAESegmentation, default_fetch_layers, three_nn_interpolate
from pointgst.errors import CheckpointError

from . import official_point_mae as mae
from .official_layout import point_mae_segmentation
from .segmentation_reference import as_trained, reference_head

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "shapenetpart_samples"
NORMAL = SAMPLES / "shapenetcore_partanno_segmentation_benchmark_v0_normal"


def test_official_layout_and_counts():
    model = PointMAESegmentation()
    state = model.state_dict()
    assert len(state) == 192 and sum(p.numel() for p in model.parameters()) == 27_063_730
    assert {k: tuple(v.shape) for k, v in state.items()} == point_mae_segmentation()


def test_fetch_layers_spread_over_the_depth():
    assert default_fetch_layers(12) == (3, 7, 11) and default_fetch_layers(24) == (7, 15, 23)
    assert default_fetch_layers(4) == (0, 1, 3)
    with pytest.raises(ValueError, match="ascending distinct block indices"):
        PointMAESegmentation(fetch_layers=(7, 3))


class ReferenceSegmentation(nn.Module):
    """The official segmentation network written from docs/segmentation.md §1, with the official key names."""

    def __init__(self, parts: int = 50, dim: int = 384, depth: int = 12, heads: int = 6, num_group: int = 128):
        super().__init__()
        self.heads, self.num_group = heads, num_group
        self.encoder = mae.official_encoder(dim)
        self.pos_embed = mae.official_pos_embed(dim)
        self.blocks = mae.official_blocks(dim, depth)
        self.norm = nn.LayerNorm(dim)
        self.label_conv = nn.Sequential(nn.Conv1d(16, 64, 1, bias=False), nn.BatchNorm1d(64), nn.LeakyReLU(0.2))
        self.propagation_0 = nn.Module()
        self.propagation_0.mlp_convs = nn.ModuleList([nn.Conv1d(3 * dim + 3, 4 * dim, 1), nn.Conv1d(4 * dim, 1024, 1)])
        self.propagation_0.mlp_bns = nn.ModuleList([nn.BatchNorm1d(4 * dim), nn.BatchNorm1d(1024)])
        self.convs1, self.convs2 = nn.Conv1d(1024 + 6 * dim + 64, 512, 1), nn.Conv1d(512, 256, 1)
        self.convs3 = nn.Conv1d(256, parts, 1)
        self.bns1, self.bns2 = nn.BatchNorm1d(512), nn.BatchNorm1d(256)

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3), category (B,) -> log-probabilities (B, N, parts), as the official forward returns."""
        x, centers = mae.group_and_encode(self.encoder, points, self.num_group, skip_near_origin=False)
        pos, fetched = self.pos_embed(centers), []
        for i, block in enumerate(self.blocks.blocks):
            x = x + pos
            x = x + mae.explicit_attention(block.attn, block.norm1(x), self.heads)
            x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))
            if i in (3, 7, 11):
                fetched.append(self.norm(x).transpose(1, 2))
        x = torch.cat(fetched, dim=1)  # (B, 1152, G)
        return reference_head(self, x, points, centers, category)


def trained_reference() -> ReferenceSegmentation:
    """A reference model with non-trivial BatchNorm statistics, as after training, in eval mode."""
    torch.manual_seed(3)
    return as_trained(ReferenceSegmentation())


def shapes_2048() -> torch.Tensor:
    """Two real ShapeNetPart shapes (2048 points each, normalised) when the shared samples are here, else two
    seeded random clouds."""
    files = sorted(NORMAL.glob("*/*.txt"))[:2] if NORMAL.is_dir() else []
    if len(files) < 2:
        return torch.randn(2, 2048, 3, generator=torch.Generator().manual_seed(7))
    clouds = []
    for file in files:
        xyz = torch.from_numpy(__import__("numpy").loadtxt(file)[:, :3]).float()
        xyz = xyz - xyz.mean(0)
        xyz = xyz / xyz.norm(dim=1).max()
        clouds.append(xyz[torch.randint(len(xyz), (2048,), generator=torch.Generator().manual_seed(8))])
    return torch.stack(clouds)


def test_official_checkpoint_loads_strictly_and_gives_the_reference_outputs(tmp_path):
    reference = trained_reference()
    torch.save({"epoch": 7, "class_avg_iou": 0.5, "model_state_dict": reference.state_dict(),
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, tmp_path / "best_model.pth")
    model = pointgst.create_backbone("point_mae_seg", pretrained=tmp_path / "best_model.pth").eval()
    assert model.load_report.missing_keys == [] and model.load_report.unexpected_keys == []
    points, category = shapes_2048(), torch.tensor([15, 14])
    with torch.no_grad():
        expected = reference(points, category)
        got = F.log_softmax(model(points, category), dim=-1)
    assert got.shape == (2, 2048, 50)
    assert (got - expected).abs().max().item() <= 1e-5


def test_pretrained_backbone_weights_fill_everything_before_the_head(tmp_path):
    backbone = pointgst.create_backbone("point_mae", num_classes=15)
    state = {f"MAE_encoder.{k}": v for k, v in backbone.state_dict().items()
             if not k.startswith(("cls_token", "cls_pos", "cls_head"))}
    torch.save({"base_model": state}, tmp_path / "pretrain.pth")
    model = pointgst.create_backbone("point_mae_seg", pretrained=tmp_path / "pretrain.pth")
    head = [k for k in model.state_dict() if k.startswith(model.head_prefixes)]
    assert sorted(model.load_report.missing_keys) == sorted(head) and len(head) == 36
    assert torch.equal(model.state_dict()["blocks.blocks.11.mlp.fc2.weight"],
                       backbone.state_dict()["blocks.blocks.11.mlp.fc2.weight"])
    # a tag of the backbone family builds its segmentation model with task="segmentation"
    tiny = pointgst.create_backbone("point_mae_tiny.modelnet40", pretrained=True, task="segmentation")
    assert tiny.architecture == "point_mae_tiny_seg" and tiny.num_classes == 50


def test_a_foreign_checkpoint_is_refused_with_a_clear_line(tmp_path):
    torch.save({"base_model": pointgst.create_backbone("pointgpt_s").state_dict()}, tmp_path / "gpt.pth")
    with pytest.raises(CheckpointError, match="does not (fit|match) point_mae_seg"):
        pointgst.create_backbone("point_mae_seg", pretrained=tmp_path / "gpt.pth")
    with pytest.raises(ValueError, match="task must be one of classification, segmentation"):
        pointgst.create_backbone("pointgpt_s", task="detection")
    assert set(factory.SEGMENTATION_ARCHITECTURES) == {a for a in factory.ARCHITECTURES if not a.endswith("_seg")}


def test_bad_categories_get_one_clear_line():
    model = PointMAESegmentation(num_group=16, group_size=8).eval()
    points = torch.randn(2, 64, 3)
    for category, needle in ((torch.tensor([0.0, 1.0]), "integer tensor"), (torch.tensor([1]), r"shape \(B,\)"),
                             (torch.tensor([0, 16]), r"in \[0, 16\)")):
        with pytest.raises(ValueError, match=needle):
            model(points, category)


def test_three_nn_interpolation_is_exact_at_a_centre_and_weights_sum_to_one():
    centers = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    features = torch.arange(8.0).reshape(1, 4, 2)
    at_centre = three_nn_interpolate(centers[:, 1:2], centers, features)
    assert torch.allclose(at_centre, features[:, 1:2], atol=1e-6)
    constant = three_nn_interpolate(torch.rand(1, 5, 3), centers, torch.ones(1, 4, 2))
    assert torch.allclose(constant, torch.ones(1, 5, 2), atol=1e-6)


def test_params_show_the_segmentation_head_separately(capsys):
    from .cli_runs import run_cli_here

    code, printed, err = run_cli_here(["params", "point_mae", "--task", "segmentation"], capsys)
    assert code == 0, err
    # PCSA: 12 blocks x 29,544 (down 13,860, up 14,208, adapt1 1,332, two LayerNorms 144) = 354,528
    assert "point_mae_seg + pcsa" in printed and "5,593,234" in printed
    assert "segmentation head          5,238,706" in printed and "adapters on ffn_branch       354,528" in printed
    code, printed, err = run_cli_here(["params", "point_mae", "--task", "segmentation", "--method", "all"], capsys)
    assert code == 0, err
    assert "deepla_head             620,610" in printed and "linear                5,238,706" in printed
    assert "full                 27,063,730  100.00%" in printed
    assert "(not on point_mae_seg: dapt, idpt, gaprompt, ppt)" in printed  # classification-only methods


def test_a_saved_segmentation_model_keeps_its_fetched_blocks_and_only_adapts_the_blocks_that_run(tmp_path):
    model = pointgst.wrap("point_mae_tiny.modelnet40", "pcsa", task="segmentation", fetch_layers=(0, 1, 2),
                          num_group=32, group_size=16, local_size=16).eval()
    assert len(model.get_base_model().transformer_blocks) == 3  # block 3 never reaches the output
    assert not any("blocks.blocks.3." in name for name, p in model.named_parameters() if p.requires_grad)
    points, category = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([2, 9])
    model.save_pretrained(tmp_path / "adapter")
    loaded = pointgst.load_adapter(tmp_path / "adapter").eval()
    assert loaded.get_base_model().fetch_layers == (0, 1, 2)
    with torch.no_grad():
        assert torch.equal(loaded(points, category), model(points, category))


def test_a_segmentation_checkpoint_missing_part_of_its_head_is_refused(tmp_path):
    state = {k: v for k, v in PointMAESegmentation().state_dict().items() if not k.startswith("convs3.")}
    torch.save({"model_state_dict": state}, tmp_path / "best_model.pth")
    with pytest.raises(CheckpointError, match="backbone keys are missing"):
        pointgst.create_backbone("point_mae_seg", pretrained=tmp_path / "best_model.pth")


def test_evaluation_shards_count_every_sample_once():
    from pointgst.training.data import ShardSampler

    for size, world in ((10, 4), (3, 8), (2874, 4)):
        shards = [list(ShardSampler(size, rank, world)) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(size))
