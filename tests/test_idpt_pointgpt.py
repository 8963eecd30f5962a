"""IDPT on PointGPT-S/B/L (``docs/peft_methods/idpt.md`` §9): the sequence each family runs (checked against a forward
written out by hand from the backbone's parts), where the prompt enters the causal sequence and what it reaches, what
the head reads, per-sample eval, what trains, the trainable counts on S/B/L, and the refusal to convert a PointGPT
layout (IDPT's official code has no PointGPT variant)."""

import pytest
import torch

import pointgst
from pointgst.adapters.idpt import IDPT, options_from_official
from pointgst.backbones.factory import ARCHITECTURES
from pointgst.errors import CheckpointError

from .cli_runs import run_cli_here
from .test_dapt import assert_eval_is_deterministic_and_per_sample
from .test_idpt import assert_only_the_module_and_the_cls_tokens_train, clouds, idpt_module, prompt_entry

GROUPING = dict(num_classes=5, num_group=32, group_size=16)


def idpt_on(arch: str, **options) -> torch.nn.Module:
    """``arch`` + IDPT, 32 groups of 16 points, 5 classes, seeded."""
    torch.manual_seed(3)
    return pointgst.wrap(pointgst.create_backbone(arch, **GROUPING), method="idpt", **options)


def roughen(model: torch.nn.Module) -> None:
    """Seeded values away from their init (1 / 0) in the final norms and the zero-initialised ``sos_pos``, as after
    training, so that a norm skipped or swapped, or a position left out, changes the logits."""
    backbone, module = model.get_base_model(), idpt_module(model)
    generator = torch.Generator().manual_seed(9)
    gpt = backbone.architecture.startswith("pointgpt")
    norms = [backbone.blocks.ln_f, backbone.blocks.cls_norm, module.cls_norm] if gpt else [backbone.norm]
    tensors = [t for norm in norms for t in (norm.weight, norm.bias)] + ([backbone.sos_pos] if gpt else [])
    with torch.no_grad():
        for tensor in tensors:
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.3)


def by_hand(model: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    """The logits written out from the backbone's parts per family: Point-MAE ``[cls, prompt, t..]`` with positions
    ``[cls_pos, prompt_pos, PE..]``, ``norm``, head on ``[h_0, h_1, max h_2:]``; PointGPT ``[sos, cls, prompt, t..]``
    with ``[cls_pos, sos_pos, prompt_pos, PE..]`` (the official swap), ``ln_f`` then the module's ``cls_norm``, head
    on ``[h_1, h_2, max h_3:]``. ``h = layer(h + pos)`` for every layer, the prompt inserted before its block."""
    backbone, module = model.get_base_model(), idpt_module(model)
    b = points.shape[0]
    neighborhood, centers = backbone.group(points)
    tokens, position = backbone.encoder(neighborhood), backbone.pos_embed(centers)
    cls_token, cls_pos = (t.expand(b, -1, -1) for t in backbone.special_tokens())
    if backbone.architecture.startswith("pointgpt"):
        x = torch.cat([backbone.blocks.sos.expand(b, 1, -1), cls_token, tokens], dim=1)
        pos = torch.cat([cls_pos, backbone.sos_pos.expand(b, -1, -1), position], dim=1)
        layers, s = backbone.blocks.layers, 2

        def final(h: torch.Tensor) -> torch.Tensor:
            return module.cls_norm(backbone.blocks.ln_f(h))
    else:
        x, pos = torch.cat([cls_token, tokens], dim=1), torch.cat([cls_pos, position], dim=1)
        layers, s, final = backbone.blocks.blocks, 1, backbone.norm
    for index, layer in enumerate(layers):
        if index == module.prompt_block:
            prompt = module.generator(x[:, s:])
            x = torch.cat([x[:, :s], prompt, x[:, s:]], dim=1)
            pos = torch.cat([pos[:, :s], module.prompt_pos.expand(b, -1, -1), pos[:, s:]], dim=1)
        x = layer(x + pos)
    h = final(x)
    return module.head(torch.cat([h[:, s - 1], h[:, s], h[:, s + 1:].amax(dim=1)], dim=-1))


# ------------------------------------------------------------------------------------------------ sequence layout

@pytest.mark.parametrize("arch, prompt_block", [("pointgpt_s", -1), ("pointgpt_s", 0), ("pointgpt_s", 5),
                                                ("point_mae_tiny", -1), ("point_mae_tiny", 0)])
def test_each_family_runs_its_sequence_with_the_prompt_after_its_special_tokens(arch, prompt_block):
    model = idpt_on(arch, prompt_block=prompt_block).eval()
    roughen(model)  # the backbone's own cls_norm changes too: the module must use its copy
    points = clouds(2)
    with torch.no_grad():
        logits, expected = model(points), by_hand(model, points)
    assert logits.shape == (2, 5) and expected.abs().max().item() > 1e-3
    assert (logits - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("prompt_block, index", [(-1, 11), (5, 5), (0, 0), (-12, 0)])
def test_on_pointgpt_the_prompt_enters_before_its_layer_from_the_tokens_that_layer_receives(prompt_block, index):
    model = idpt_on("pointgpt_s", prompt_block=prompt_block).eval()
    lengths, generator_input, previous = prompt_entry(model, model.get_base_model().blocks.layers, index)
    assert lengths == [34] * index + [35] * (12 - index)  # [sos, cls, 32 point tokens], then the prompt joins
    if index:  # the point tokens the previous layer outputs, before the positions are added
        assert torch.equal(generator_input, previous[:, 2:])
    assert generator_input.shape == (2, 32, 384)


@pytest.mark.parametrize("arch, depth", [("pointgpt_s", 12), ("pointgpt_b", 12), ("pointgpt_l", 24)])
def test_prompt_block_counts_like_an_index_on_12_and_24_layers(arch, depth):
    with torch.device("meta"):
        resolved = {block: idpt_module(pointgst.wrap(ARCHITECTURES[arch](num_classes=15), method="idpt",
                                                     prompt_block=block)).prompt_block for block in (-1, -6, 6)}
        assert resolved == {-1: depth - 1, -6: depth - 6, 6: 6}
        with pytest.raises(ValueError, match=rf"prompt_block={depth} names no block of this {depth}-block backbone"):
            pointgst.wrap(ARCHITECTURES[arch](num_classes=15), method="idpt", prompt_block=depth)


# ------------------------------------------------------------------------------------------------ causal placement

def test_the_prompt_reaches_every_point_token_but_not_sos_or_cls():
    """Placed after ``[sos, cls]`` and before the point tokens, the prompt is seen by every point token and by itself;
    sos and cls see only themselves and each other, so the cls output stays input-independent (official PointGPT)."""
    model = idpt_on("pointgpt_s").eval()  # the prompt enters before the last layer
    backbone, module = model.get_base_model(), idpt_module(model)
    finals = []
    hook = backbone.blocks.ln_f.register_forward_hook(lambda _, args, out: finals.append(args[0]))
    with torch.no_grad():
        model(clouds(2, seed=1))
        model(clouds(2, seed=2))
        # the same clouds, another prompt position (not a constant shift: PointGPT's ln_1 would remove it)
        module.prompt_pos += torch.randn(module.prompt_pos.shape, generator=torch.Generator().manual_seed(5))
        model(clouds(2, seed=2))
    hook.remove()
    first, second, moved = finals  # the last layer's outputs (2, 35, 384): [sos, cls, prompt, t_1..t_32]
    assert torch.equal(first[:, :2], second[:, :2])  # sos and cls: the same for any cloud
    assert (first[:, 2:] - second[:, 2:]).abs().amax(dim=-1).min().item() > 1e-3
    assert torch.equal(moved[:, :2], second[:, :2])
    assert (moved[:, 2:] - second[:, 2:]).abs().amax(dim=-1).min().item() > 1e-3  # the prompt and every point token


@pytest.mark.parametrize("head_input, parts", [("cls+prompt+max", ("cls", "prompt", "max")), ("prompt", ("prompt",)),
                                               ("cls+max", ("cls", "max"))])
def test_the_head_reads_cls_at_1_the_prompt_at_2_and_the_point_tokens_after_cls_norm(head_input, parts):
    model = idpt_on("pointgpt_s", head_input=head_input).eval()
    roughen(model)
    module = idpt_module(model)
    seen = {}
    hooks = [module.cls_norm.register_forward_hook(lambda _, args, out: seen.update(tokens=out)),
             module.head.register_forward_pre_hook(lambda _, args: seen.update(features=args[0]))]
    with torch.no_grad():
        model(clouds(2))
    for hook in hooks:
        hook.remove()
    h = seen["tokens"]
    expected = {"cls": h[:, 1], "prompt": h[:, 2], "max": h[:, 3:].amax(dim=1)}
    assert torch.equal(seen["features"], torch.cat([expected[p] for p in parts], dim=-1))


# ------------------------------------------------------------------------------------------------ behaviour

def test_eval_forward_on_pointgpt_is_deterministic_and_per_sample():
    assert_eval_is_deterministic_and_per_sample(idpt_on("pointgpt_s").eval(), clouds(3, seed=4))


def test_on_pointgpt_the_generator_the_head_cls_norm_and_the_cls_tokens_train():
    model = idpt_on("pointgpt_s")
    backbone, module = model.get_base_model(), idpt_module(model)
    # the module's cls_norm starts as the backbone's (the official PointGPT head norm), as its own tensors
    assert torch.equal(module.cls_norm.weight, backbone.blocks.cls_norm.weight)
    assert module.cls_norm.weight.data_ptr() != backbone.blocks.cls_norm.weight.data_ptr()
    assert {n.split(".")[0] for n, _ in module.named_parameters()} == {"generator", "head", "cls_norm"}
    # the backbone's sos, sos_pos, layers, ln_f and its own (unused) cls_norm and head get no gradient
    assert_only_the_module_and_the_cls_tokens_train(model)


# ------------------------------------------------------------------------------------------------ parameter counts

def pointgpt_idpt_count(dim: int, classes: int, head_widths: int = 3) -> int:
    """cls token + position 2C; generator 3 edge convolutions 3 (2C C) + fuse 3C C + 4 BatchNorms 4 (2C) = 9C^2 + 8C;
    cls_norm copy 2C; head (nC 256 + 256) + 512 + (256 256 + 256) + 512 + (256 classes + classes)."""
    head = (head_widths * dim * 256 + 256) + 512 + (256 * 256 + 256) + 512 + (256 * classes + classes)
    return 2 * dim + (9 * dim * dim + 8 * dim) + 2 * dim + head


@pytest.mark.parametrize("arch, dim, classes, options, expected", [
    ("pointgpt_s", 384, 40, {}, 1_703_976),
    ("pointgpt_s", 384, 15, {}, 1_697_551),
    ("pointgpt_s", 384, 15, {"head_input": "prompt"}, 1_500_943),
    ("pointgpt_b", 768, 40, {}, 5_984_808),
    ("pointgpt_b", 768, 15, {}, 5_978_383),
    ("pointgpt_l", 1024, 40, {}, 10_313_256),
    ("pointgpt_l", 1024, 15, {}, 10_306_831),
])
def test_trainable_parameters_on_pointgpt_s_b_l(arch, dim, classes, options, expected):
    with torch.device("meta"):
        report = pointgst.parameter_report(pointgst.wrap(ARCHITECTURES[arch](num_classes=classes), method="idpt",
                                                         **options))
    widths = 1 if options else 3
    assert report.trainable == expected == pointgpt_idpt_count(dim, classes, widths)
    assert report.breakdown["method: generator"] == 9 * dim * dim + 8 * dim
    assert report.breakdown["method: cls_norm"] == report.breakdown["cls token + cls position"] == 2 * dim
    if arch == "pointgpt_l":
        print(report)


# ------------------------------------------------------------------------------------------------ conversion

def test_a_pointgpt_idpt_has_no_official_layout_and_convert_refuses_one(tmp_path, capsys):
    """IDPT's official code runs on Point-MAE only: a PointGPT-built module names no official keys, and a checkpoint
    with IDPT's official generator keys on PointGPT's blocks is refused in one line, nothing written."""
    with pytest.raises(ValueError, match="official code runs on Point-MAE only"):
        idpt_module(idpt_on("pointgpt_s")).official_names()
    backbone = pointgst.create_backbone("pointgpt_s", num_classes=15)
    point_mae_layout = IDPT(384, 15, prompt_block=11)
    state = dict(backbone.state_dict())
    own_state = point_mae_layout.state_dict()
    state |= {official: own_state[own] for own, official in point_mae_layout.official_names().items()}
    with pytest.raises(CheckpointError, match=r"PointGPT's block keys \(blocks\.layers\.\*\)"):
        options_from_official(state)
    torch.save({"base_model": state}, tmp_path / "pointgpt-idpt.pth")
    code, _, err = run_cli_here(["convert", tmp_path / "pointgpt-idpt.pth", tmp_path / "out"], capsys)
    assert code != 0 and "no official PointGPT layout exists to convert" in err and not (tmp_path / "out").exists()
    assert len(err.strip().splitlines()) == 1, err
