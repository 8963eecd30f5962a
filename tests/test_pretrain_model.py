"""Point-MAE pretraining model: official layout, masking, learning, and loading into the fine-tuning backbone."""

from pathlib import Path

import numpy as np
import pytest
import torch

import pointgst
from pointgst.backbones.point_mae_pretrain import PointMAEPretrain

from . import official_layout as official

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_official_pretrain_layout_and_parameter_count():
    with torch.device("meta"):
        model = PointMAEPretrain()
    expected = official.point_mae_pretrain()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert len(expected) == 209 and sum(p.numel() for p in model.parameters()) == 29_006_432


def test_random_mask_hides_the_same_number_of_patches_per_sample():
    model = PointMAEPretrain(embed_dim=96, depth=1, num_heads=2, decoder_depth=1)
    mask = model.random_mask(5, 64, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and (mask.sum(dim=1) == int(0.6 * 64)).all()
    assert torch.equal(mask, model.random_mask(5, 64, torch.Generator().manual_seed(0)))
    assert not torch.equal(mask, model.random_mask(5, 64, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="mask_ratio"):
        PointMAEPretrain(mask_ratio=1.0)


def test_reconstruction_loss_falls_on_real_modelnet40():
    if not (SHARED_DATA / "modelnet40_1024" / "train.npz").is_file():
        pytest.skip("shared ModelNet40 pack absent")
    pack = np.load(SHARED_DATA / "modelnet40_1024" / "train.npz")
    points = torch.from_numpy(pack["points"][::400][:16].copy())
    torch.manual_seed(0)
    model = PointMAEPretrain(num_group=32, group_size=32, embed_dim=96, depth=2, num_heads=2, decoder_depth=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_at(seed: int) -> float:
        model.eval()
        with torch.no_grad():
            return model(points, torch.Generator().manual_seed(seed)).item()

    start = loss_at(123)
    for step in range(15):
        model.train()
        loss = model(points, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_at(123) < 0.8 * start


def test_pretrained_state_loads_into_the_finetuning_backbone(tmp_path):
    model = PointMAEPretrain()
    torch.save({"base_model": model.state_dict()}, tmp_path / "pretrain.pth")
    backbone = pointgst.create_backbone("point_mae", pretrained=tmp_path / "pretrain.pth", num_classes=15)
    report = backbone.load_report
    assert set(report.unexpected_keys) == set(official.point_mae_decoder())
    assert {k for k in report.missing_keys} == {"cls_token", "cls_pos"} | {
        k for k in official.point_mae_finetune() if k.startswith("cls_head")}
    source = model.MAE_encoder.state_dict()
    own = backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items())
