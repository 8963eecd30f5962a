"""The contract every registered method keeps on every backbone (``docs/design.md``, "Contracts"), one matrix over
``pointgst.list_methods()`` x backbones, in the manner of peft's common tester and timm's ``list_models()`` tests:

- an untrained wrapped model gives the frozen backbone's outputs exactly where the registry says it is exact;
- one optimizer step changes trainable tensors only (and the statistics of trained modules);
- ``save_pretrained`` -> ``pointgst.load_adapter`` in a fresh process seeded differently gives identical logits;
- ``unload()`` gives the backbone back bit-exactly (``full`` trains the backbone itself: it returns it);
- the parameter report's parts sum to its totals.

A method whose registry entry limits it to some backbones (``backbones``: the ``forward`` methods DAPT, IDPT,
GAPrompt, PPT run on the Point-MAE family) must be refused on the others with one clear error naming both; each test
checks that refusal for such a pair.

The segmentation task is covered by ``point_mae_tiny_seg`` (per-point logits from points and a category); a head
method replaces its segmentation head there (the DeepLA-Net decoder for ``deepla_head``), so it is not exact at init.

Each backbone sits on a weights folder that, like a pretraining checkpoint, lacks the cls token and position and the
head, so what the model depends on beyond its source must travel with the adapter. Grouping is small (32 groups of
16 points, 128-point clouds) to keep the matrix fast. The default run covers both model families through
``point_mae_tiny`` (the Point-MAE class at width 192) and ``pointgpt_s``; the full-width ``point_mae`` and
PointGPT-B/L run with ``-m slow``.
"""

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.adapters import FULL, METHODS
from pointgst.backbones.checkpoint import FOLDER_FORMAT, write_weights_folder

GROUPING = {"num_group": 32, "group_size": 16}
CLASSES = 5
BACKBONES = ["point_mae_tiny", "pointgpt_s", "point_mae_tiny_seg", pytest.param("point_mae", marks=pytest.mark.slow),
             pytest.param("pointgpt_b", marks=pytest.mark.slow), pytest.param("pointgpt_l", marks=pytest.mark.slow),
             pytest.param("point_mae_seg", marks=pytest.mark.slow),
             pytest.param("pointgpt_s_seg", marks=pytest.mark.slow)]
METHOD_NAMES = METHODS.names()
#: the backbone family whose (pretraining) weights a segmentation model starts from
WEIGHTS_ARCH = {"point_mae_tiny_seg": "point_mae_tiny", "point_mae_seg": "point_mae", "pointgpt_s_seg": "pointgpt_s"}


def points(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 128, 3, generator=torch.Generator().manual_seed(seed))


def inputs(arch: str, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The model's inputs: clouds, and for a segmentation model one category per cloud."""
    return (points(batch, seed), torch.arange(batch) % 16) if arch in WEIGHTS_ARCH else (points(batch, seed),)


def loss_of(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against fixed labels: one per cloud (B, C), or one per point (B, N, C)."""
    labels = torch.arange(logits[..., 0].numel()).reshape(logits.shape[:-1]) % CLASSES
    return F.cross_entropy(logits.reshape(-1, CLASSES), labels.reshape(-1))


def pretraining_folder(arch: str, folder: Path) -> Path:
    """A seeded random backbone saved without cls token, cls position and head, as a pretraining checkpoint is (a
    segmentation model's backbone part, as its backbone family's checkpoint)."""
    torch.manual_seed(11)
    backbone = pointgst.create_backbone(arch, num_classes=CLASSES, **GROUPING)
    state = {k: v for k, v in backbone.state_dict().items()
             if k not in ("cls_token", "cls_pos") and not k.startswith(backbone.head_prefixes)}
    write_weights_folder(state, folder, {"format": FOLDER_FORMAT, "architecture": WEIGHTS_ARCH.get(arch, arch),
                                         "num_classes": None,
                                         "backbone_options": {**GROUPING, "skip_near_origin": False}})
    return folder


def perturb_trainable(model: torch.nn.Module, seed: int) -> None:
    """Seeded non-zero values in every trainable tensor, so that a reload missing any of them shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def owners_of_trainable(model: torch.nn.Module) -> set[str]:
    return {name.rpartition(".")[0] for name, p in model.named_parameters() if p.requires_grad}


def build_case(arch: str, root: Path) -> dict:
    """Per method on one backbone: outputs before and after wrapping, what one step changed, the unloaded backbone,
    the report, and the saved folder."""
    source = pretraining_folder(arch, root / "backbone")
    x, train_x = inputs(arch, 3, 1), inputs(arch, 4, 2)
    results = {}
    for method in METHOD_NAMES:
        torch.manual_seed(21)
        backbone = pointgst.create_backbone(arch, pretrained=source, num_classes=CLASSES).eval()
        if not all(spec.supports(backbone.architecture) for spec in METHODS.parts(method)):
            with pytest.raises(ValueError) as refusal:
                pointgst.wrap(backbone, method=method)
            results[method] = dict(refused=str(refusal.value), architecture=backbone.architecture)
            continue
        pristine = copy.deepcopy(backbone.state_dict())
        with torch.no_grad():
            frozen_logits = backbone(*x)
        model = pointgst.wrap(backbone, method=method).eval()
        with torch.no_grad():
            wrapped_logits = model(*x)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        owners = owners_of_trainable(model)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        loss_of(model(*train_x)).backward()
        optimizer.step()
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        perturb_trainable(model, seed=31)
        model.eval()
        with torch.no_grad():
            trained_logits = model(*x)
        folder = root / method.replace("+", "_")
        model.save_pretrained(folder)
        report = pointgst.parameter_report(model)
        counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
        backbone_total = sum(v.numel() for k, v in pristine.items() if v.is_floating_point() and "running_" not in k)
        unloaded = model if METHODS.parts(method)[0].attaches == FULL else model.unload()
        unloaded_state = unloaded.state_dict()
        results[method] = dict(
            frozen=frozen_logits, wrapped=wrapped_logits, changed=changed, trainable=trainable, owners=owners,
            trained=trained_logits, folder=folder, report=report, counted=counted, backbone_total=backbone_total,
            x=x, unloaded_type=type(unloaded), unloaded_keys=unloaded_state.keys() == pristine.keys(),
            unloaded_exact=[k for k, v in pristine.items() if not torch.equal(unloaded_state.get(k, v.new_empty(0)), v)])
        del model, backbone, unloaded, unloaded_state, pristine, optimizer  # PointGPT-L: 1.4 GB each
    return results


def reload_in_a_fresh_process(cases: dict[str, dict], root: Path) -> None:
    """Load every saved model of ``cases`` (arch -> method -> result) in one new process, under a seed none of them
    was built with, and store its logits as ``result["reloaded"]``."""
    jobs = {f"{arch}/{method}": (str(r["folder"]), str(root / f"{arch}-x.pt"))
            for arch, results in cases.items() for method, r in results.items() if "refused" not in r}
    for arch, results in cases.items():
        torch.save(next(r for r in results.values() if "x" in r)["x"], root / f"{arch}-x.pt")
    script = textwrap.dedent(f"""
        import json, torch, pointgst
        out = {{}}
        for job, (folder, points) in json.loads({json.dumps(jobs)!r}).items():
            torch.manual_seed(987654)  # not the seed the model was built with
            with torch.no_grad():
                out[job] = pointgst.load_adapter(folder).eval()(*torch.load(points))
        torch.save(out, {str(root / 'reloaded.pt')!r})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    reloaded = torch.load(root / "reloaded.pt")
    for job, logits in reloaded.items():
        arch, _, method = job.partition("/")
        cases[arch][method]["reloaded"] = logits


_CASES: dict[str, dict] = {}


@pytest.fixture(scope="module", params=BACKBONES)
def case(request, tmp_path_factory) -> dict:
    """The results of :func:`build_case` with their fresh-process reloads. The default backbones are built together
    and reloaded by one process (one interpreter start instead of three)."""
    arch = request.param
    if arch not in _CASES:
        group = [b for b in BACKBONES if isinstance(b, str)] if isinstance(arch, str) and arch in BACKBONES else [arch]
        root = tmp_path_factory.mktemp("contract")
        built = {name: build_case(name, root / name) for name in group}
        reload_in_a_fresh_process(built, root)
        _CASES.update(built)
    return _CASES[arch]


def supported_result(case: dict, method: str) -> dict | None:
    """The method's results on the case's backbone; None, after checking the refusal, where the method's registry entry
    excludes that backbone (wrap must have refused it naming the method and the backbone)."""
    result = case[method]
    if "refused" not in result:
        return result
    assert method in result["refused"] and result["architecture"] in result["refused"], result["refused"]
    assert "\n" not in result["refused"] and "choose one of" in result["refused"], result["refused"]
    return None


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_untrained_model_equals_the_frozen_backbone_where_the_registry_says_exact(case, method):
    result = supported_result(case, method)
    if result is None:
        return
    exact = all(spec.exact_at_init for spec in METHODS.parts(method))
    if exact:
        assert torch.equal(result["wrapped"], result["frozen"]), method
    else:  # a head method replaces the head: its registry entry must say so, and its outputs do differ
        assert not torch.equal(result["wrapped"], result["frozen"]), method


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_one_step_changes_only_trainable_tensors(case, method):
    result = supported_result(case, method)
    if result is None:
        return
    assert result["changed"], f"{method}: one optimizer step changed nothing"
    for key in result["changed"]:
        allowed = key in result["trainable"] or key.rpartition(".")[0] in result["owners"]
        assert allowed, f"{method}: one step changed {key}, which is neither trainable nor a trained module's buffer"


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_save_then_load_in_a_fresh_differently_seeded_process_gives_identical_logits(case, method):
    result = supported_result(case, method)
    if result is None:
        return
    assert (result["reloaded"] - result["trained"]).abs().max().item() <= 1e-6, method


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_unload_gives_the_backbone_back_bit_exactly(case, method):
    result = supported_result(case, method)
    if result is None:
        return
    assert issubclass(result["unloaded_type"], pointgst.backbones.PointBackbone), method
    if METHODS.parts(method)[0].attaches == FULL:  # full fine-tuning trains the backbone itself and returns it
        return
    assert result["unloaded_keys"], method
    assert result["unloaded_exact"] == [], (method, result["unloaded_exact"][:3])


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_report_parts_sum_to_the_totals(case, method):
    result = supported_result(case, method)
    if result is None:
        return
    report = result["report"]
    assert sum(report.breakdown.values()) == report.trainable == result["counted"], method
    assert report.backbone_total == result["backbone_total"], method
    assert report.method == method
