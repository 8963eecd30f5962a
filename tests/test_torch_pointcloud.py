"""Tests for pointgst.backbones.torch_pointcloud (torch-pointcloud hub layout -> official layout).

The official layouts are generated here from the tables of docs/checkpoints.md (§1, §2, §3.1, §3.4). The
torch-pointcloud layout is produced from them by an inverse mapping written independently in this file from
the library's module definitions (PyG ``MLP`` -> ``lins.{j}`` / ``norms.{j}.module.*``, ``norm_f``, ``head``,
``cls_norm`` at top level, no extractor ``increase_dim``, 1x1 convs stored as 2-D Linear weights).
"""

from __future__ import annotations

import re

import pytest
import torch

from pointgst.backbones.torch_pointcloud import (
    ARCHITECTURES,
    TorchPointcloudLayoutError,
    convert_torch_pointcloud_state_dict,
    detect_torch_pointcloud_architecture,
    detect_torch_pointcloud_kind,
    looks_like_torch_pointcloud,
    official_keys_without_source,
    torch_pointcloud_key_table,
)

from . import official_layout

Shapes = dict[str, tuple[int, ...]]
SIZES = official_layout.GPT_SIZES  # width, depth, large patch encoder


def official_shapes(arch: str, kind: str, cls_dim: int = 15) -> Shapes:
    """Official key -> shape tables (``tests/official_layout.py``): fine-tune models, or pretraining checkpoints
    with their official prefixes."""
    if arch == "point_mae":
        return official_layout.point_mae_finetune(cls_dim) if kind == "finetune" else official_layout.point_mae_pretrain()
    if kind == "finetune":
        return official_layout.pointgpt_finetune(arch, cls_dim)
    return {f"GPT_Transformer.{k}": v for k, v in official_layout.pointgpt_pretrain(arch).items()}


def make_tensors(shapes: Shapes, cheap: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors (or, for the big B/L models, distinct constant expanded views) with the given shapes."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for n, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000 + n, dtype=torch.int64)
        elif cheap:
            out[key] = torch.tensor(float(n) + 0.5).expand(shape)
        else:
            out[key] = torch.randn(shape, generator=gen)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Independent inverse mapping: official -> torch-pointcloud (facts from the library's module definitions)
# ----------------------------------------------------------------------------------------------------------------


def _seq_to_pyg(index: int, rest: str, period: int, *, bn_wrapper: bool = True) -> str:
    """Index ``index`` of an official nn.Sequential with ``period`` modules per layer -> PyG MLP sub-key."""
    layer, offset = divmod(index, period)
    if offset == 0:
        return f"lins.{layer}.{rest}"
    assert offset == 1, (index, period)
    return f"norms.{layer}.module.{rest}" if bn_wrapper else f"norms.{layer}.{rest}"


def to_torch_pointcloud(
    official: dict[str, torch.Tensor], arch: str, kind: str, *, bn_wrapper: bool = True
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        k = key
        if kind == "pretrain" and arch != "point_mae":
            assert k.startswith("GPT_Transformer.")
            k = k[len("GPT_Transformer.") :]
        m = re.match(r"^(MAE_encoder\.)?encoder\.(first|second)_conv\.(\d+)\.(.+)$", k)
        if m:
            pre, which, idx, rest = m.groups()
            new = f"{pre or ''}encoder.{'local' if which == 'first' else 'global'}_mlp." + _seq_to_pyg(
                int(idx), rest, 3, bn_wrapper=bn_wrapper
            )
            out[new] = value.squeeze(-1) if rest == "weight" else value
            continue
        m = re.match(r"^(blocks\.)?cls_head_finetune\.(\d+)\.(.+)$", k)
        if m:
            out["head." + _seq_to_pyg(int(m.group(2)), m.group(3), 4, bn_wrapper=bn_wrapper)] = value
            continue
        m = re.match(r"^(MAE_encoder\.pos_embed|pos_embed|decoder_pos_embed)\.(\d+)\.(.+)$", k)
        if m:
            out[f"{m.group(1)}.lins.{int(m.group(2)) // 2}.{m.group(3)}"] = value
            continue
        if arch == "point_mae":
            k = k.replace(".mlp.fc1.", ".mlp.lins.0.").replace(".mlp.fc2.", ".mlp.lins.1.")
            if kind == "finetune" and k.startswith("norm."):
                k = "norm_f." + k[len("norm.") :]
            if k.startswith("increase_dim.0."):
                out["increase_dim.lins.0." + k.rsplit(".", 1)[1]] = value.squeeze(-1) if k.endswith("weight") else value
                continue
            out[k] = value
            continue
        # PointGPT
        if k.startswith("blocks.increase_dim."):
            continue  # PointGPTExtractor has no increase_dim
        if k.startswith("generator_blocks.increase_dim.0."):
            out["generator_blocks.increase_dim.lins.0." + k.rsplit(".", 1)[1]] = (
                value.squeeze(-1) if k.endswith("weight") else value
            )
            continue
        if k.startswith("blocks.cls_norm."):
            k = k[len("blocks.") :]
        k = re.sub(r"\.mlp\.0\.", ".mlp.lins.0.", k)
        k = re.sub(r"\.mlp\.2\.", ".mlp.lins.1.", k)
        out[k] = value
    return out


def tpc_layout(arch: str, kind: str = "finetune") -> dict[str, torch.Tensor]:
    """A torch-pointcloud state dict (cheap tensors) for ``arch``/``kind``."""
    return to_torch_pointcloud(make_tensors(official_shapes(arch, kind), cheap=True), arch, kind)


def expected_after_roundtrip(official: dict[str, torch.Tensor], arch: str, kind: str) -> dict[str, torch.Tensor]:
    dropped = set(official_keys_without_source(arch, kind))
    return {k: v for k, v in official.items() if k not in dropped}


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    extra, missing = sorted(set(actual) - set(expected)), sorted(set(expected) - set(actual))
    assert not extra and not missing, (extra[:5], missing[:5])
    for key, value in expected.items():
        got = actual[key]
        assert got.shape == value.shape, (key, got.shape, value.shape)
        assert got.dtype == value.dtype, key
        assert torch.equal(got, value), key


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "kind", "count"),
    [
        ("point_mae", "finetune", 174),
        ("point_mae", "pretrain", 209),
        ("pointgpt_s", "finetune", 243),
        ("pointgpt_b", "finetune", 250),
        ("pointgpt_l", "finetune", 394),
        ("pointgpt_s", "pretrain", 223),
        ("pointgpt_b", "pretrain", 230),
        ("pointgpt_l", "pretrain", 374),
    ],
)
def test_official_generators_match_documented_counts(arch: str, kind: str, count: int) -> None:
    assert len(official_shapes(arch, kind)) == count


def test_point_mae_finetune_torch_pointcloud_layout_facts() -> None:
    tpc = tpc_layout("point_mae")
    assert len(tpc) == 174
    shapes = {k: tuple(v.shape) for k, v in tpc.items()}
    assert shapes["encoder.local_mlp.lins.0.weight"] == (128, 3)
    assert shapes["encoder.local_mlp.norms.0.module.running_var"] == (128,)
    assert shapes["encoder.global_mlp.lins.1.weight"] == (384, 512)
    assert shapes["pos_embed.lins.1.weight"] == (384, 128)
    assert shapes["blocks.blocks.11.mlp.lins.0.weight"] == (1536, 384)
    assert shapes["norm_f.weight"] == (384,)
    assert shapes["head.lins.2.weight"] == (15, 256)
    assert shapes["head.norms.1.module.num_batches_tracked"] == ()
    assert looks_like_torch_pointcloud(tpc)


@pytest.mark.parametrize(("arch", "count"), [("pointgpt_s", 241), ("pointgpt_b", 248), ("pointgpt_l", 392)])
def test_pointgpt_finetune_torch_pointcloud_layout_facts(arch: str, count: int) -> None:
    tpc = to_torch_pointcloud(make_tensors(official_shapes(arch, "finetune"), cheap=True), arch, "finetune")
    assert len(tpc) == count  # official minus blocks.increase_dim.0.{weight,bias}
    c = SIZES[arch][0]
    assert tuple(tpc["generator_blocks.increase_dim.lins.0.weight"].shape) == (96, c)
    assert tuple(tpc["blocks.layers.0.mlp.lins.1.weight"].shape) == (c, 4 * c)
    assert tuple(tpc["cls_norm.weight"].shape) == (c,)
    assert tuple(tpc["head.lins.0.weight"].shape) == (256, 2 * c)
    assert not any(k.startswith("blocks.increase_dim") for k in tpc)


@pytest.mark.parametrize(
    ("arch", "kind"),
    [("point_mae", "finetune"), ("point_mae", "pretrain"), ("pointgpt_s", "finetune"), ("pointgpt_s", "pretrain")],
)
def test_roundtrip_random_tensors(arch: str, kind: str) -> None:
    official = make_tensors(official_shapes(arch, kind))
    tpc = to_torch_pointcloud(official, arch, kind)
    converted = convert_torch_pointcloud_state_dict(tpc, arch)
    assert_same(converted, expected_after_roundtrip(official, arch, kind))
    if arch == "point_mae" and kind == "finetune":
        assert len(converted) == 174
    if arch == "pointgpt_s" and kind == "finetune":
        assert len(converted) == 241
        assert set(official) - set(converted) == {"blocks.increase_dim.0.weight", "blocks.increase_dim.0.bias"}


@pytest.mark.parametrize("arch", ["pointgpt_b", "pointgpt_l"])
@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_roundtrip_large_pointgpt(arch: str, kind: str) -> None:
    official = make_tensors(official_shapes(arch, kind, cls_dim=40), cheap=True)
    tpc = to_torch_pointcloud(official, arch, kind)
    converted = convert_torch_pointcloud_state_dict(tpc, arch, kind=kind)
    assert_same(converted, expected_after_roundtrip(official, arch, kind))


def test_conv_weights_gain_kernel_dimension() -> None:
    official = make_tensors(official_shapes("point_mae", "finetune"))
    tpc = to_torch_pointcloud(official, "point_mae", "finetune")
    assert tpc["encoder.local_mlp.lins.0.weight"].dim() == 2
    converted = convert_torch_pointcloud_state_dict(tpc, "point_mae")
    assert tuple(converted["encoder.first_conv.0.weight"].shape) == (128, 3, 1)
    assert tuple(converted["encoder.second_conv.3.weight"].shape) == (384, 512, 1)
    assert tuple(converted["pos_embed.0.weight"].shape) == (128, 3)  # Linear stays Linear


def test_legacy_pyg_batchnorm_names_accepted() -> None:
    official = make_tensors(official_shapes("pointgpt_s", "finetune"), cheap=True)
    tpc = to_torch_pointcloud(official, "pointgpt_s", "finetune", bn_wrapper=False)
    assert "encoder.local_mlp.norms.0.running_mean" in tpc
    converted = convert_torch_pointcloud_state_dict(tpc, "pointgpt_s")
    assert_same(converted, expected_after_roundtrip(official, "pointgpt_s", "finetune"))


def test_head_rows_keep_hub_order() -> None:
    official = make_tensors(official_shapes("point_mae", "finetune", cls_dim=40))
    tpc = to_torch_pointcloud(official, "point_mae", "finetune")
    converted = convert_torch_pointcloud_state_dict(tpc, "point_mae")
    assert torch.equal(converted["cls_head_finetune.8.weight"], tpc["head.lins.2.weight"])
    assert torch.equal(converted["cls_head_finetune.8.bias"], tpc["head.lins.2.bias"])


def test_detection() -> None:
    for arch in ARCHITECTURES:
        for kind in ("finetune", "pretrain"):
            official = make_tensors(official_shapes(arch, kind), cheap=True)
            tpc = to_torch_pointcloud(official, arch, kind)
            assert looks_like_torch_pointcloud(tpc), (arch, kind)
            assert not looks_like_torch_pointcloud(official), (arch, kind)
            assert detect_torch_pointcloud_kind(tpc, arch) == kind
            assert detect_torch_pointcloud_architecture(tpc) == arch
            assert detect_torch_pointcloud_architecture(official) is None
    assert not looks_like_torch_pointcloud({})
    assert not looks_like_torch_pointcloud({"module.blocks.blocks.0.mlp.fc1.weight": torch.zeros(1)})


def test_unknown_keys_raise_value_error_naming_them() -> None:
    tpc = tpc_layout("point_mae")
    tpc["label_conv.lins.0.weight"] = torch.zeros(64, 16)  # part-segmentation model key
    tpc["propagation_0.mlp.lins.0.weight"] = torch.zeros(1, 1)
    with pytest.raises(TorchPointcloudLayoutError) as info:
        convert_torch_pointcloud_state_dict(tpc, "point_mae")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "label_conv.lins.0.weight" in message
    assert "propagation_0.mlp.lins.0.weight" in message
    assert "not in the expected" in message


def test_official_layout_is_rejected() -> None:
    official = make_tensors(official_shapes("point_mae", "finetune"), cheap=True)
    with pytest.raises(TorchPointcloudLayoutError, match="not in the expected"):
        convert_torch_pointcloud_state_dict(official, "point_mae")


def test_many_unknown_keys_are_truncated_in_message() -> None:
    bad = {f"junk.{n}": torch.zeros(1) for n in range(20)}
    with pytest.raises(TorchPointcloudLayoutError, match=r"20 key\(s\).*and 15 more"):
        convert_torch_pointcloud_state_dict(bad, "pointgpt_s")


def test_wrong_architecture_is_rejected() -> None:
    tpc_b = tpc_layout("pointgpt_b")
    with pytest.raises(TorchPointcloudLayoutError):  # B has a 3-layer local_mlp: unknown keys for S
        convert_torch_pointcloud_state_dict(tpc_b, "pointgpt_s")
    tpc_l = tpc_layout("pointgpt_l")
    with pytest.raises(TorchPointcloudLayoutError, match="width"):  # same key names as B, other width/depth
        convert_torch_pointcloud_state_dict(tpc_l, "pointgpt_b")
    with pytest.raises(ValueError, match="Unknown architecture"):
        convert_torch_pointcloud_state_dict(tpc_l, "pointgpt_xl")


def test_duplicate_batchnorm_spellings_collide() -> None:
    tpc = tpc_layout("pointgpt_s")
    tpc["encoder.local_mlp.norms.0.weight"] = tpc["encoder.local_mlp.norms.0.module.weight"]
    with pytest.raises(TorchPointcloudLayoutError, match="same official key"):
        convert_torch_pointcloud_state_dict(tpc, "pointgpt_s")


def test_bad_conv_weight_rank_is_rejected() -> None:
    tpc = tpc_layout("point_mae")
    tpc["encoder.local_mlp.lins.0.weight"] = torch.zeros(128, 3, 2)
    with pytest.raises(TorchPointcloudLayoutError, match="encoder.local_mlp.lins.0.weight"):
        convert_torch_pointcloud_state_dict(tpc, "point_mae")


def test_missing_official_keys_and_table() -> None:
    assert official_keys_without_source("point_mae") == ()
    assert official_keys_without_source("pointgpt_l") == ("blocks.increase_dim.0.weight", "blocks.increase_dim.0.bias")
    assert official_keys_without_source("pointgpt_s", "pretrain") == (
        "GPT_Transformer.blocks.increase_dim.0.weight",
        "GPT_Transformer.blocks.increase_dim.0.bias",
    )
    table = torch_pointcloud_key_table("point_mae")
    assert ("norm_f.{p}", "norm.{p}", False) in table
    assert ("encoder.local_mlp.lins.0.{p}", "encoder.first_conv.0.{p}", True) in table
    assert ("head.norms.1.{bn}", "cls_head_finetune.5.{bn}", False) in table
    gpt = torch_pointcloud_key_table("pointgpt_b", "pretrain")
    assert ("encoder.local_mlp.norms.1.{bn}", "GPT_Transformer.encoder.first_conv.4.{bn}", False) in gpt
    with pytest.raises(ValueError):
        torch_pointcloud_key_table("point_mae", "segmentation")  # type: ignore[arg-type]


def test_partial_state_dict_converts_what_is_there() -> None:
    tpc = {"norm_f.weight": torch.ones(384), "head.lins.2.bias": torch.zeros(40)}
    converted = convert_torch_pointcloud_state_dict(tpc, "point_mae", kind="finetune")
    assert set(converted) == {"norm.weight", "cls_head_finetune.8.bias"}


def test_convert_checkpoint_turns_a_hub_file_into_a_weights_folder(tmp_path) -> None:
    """pointgst.converting.convert_checkpoint (the converter entry) reads a torch-pointcloud model.safetensors once
    its architecture is named, and writes a weights folder that create_backbone loads with the official tensors."""
    from safetensors.torch import save_file

    import pointgst
    from pointgst.converting import convert_checkpoint
    from pointgst.errors import CheckpointError

    official = make_tensors(official_shapes("point_mae", "finetune"))
    save_file(to_torch_pointcloud(official, "point_mae", "finetune"), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="torch-pointcloud hub layout"):
        convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    out = convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "out", architecture="point_mae")
    backbone = pointgst.create_backbone("point_mae", pretrained=out)
    assert backbone.num_classes == 15 and backbone.load_report.missing_keys == []
    assert_same(backbone.state_dict(), official)
