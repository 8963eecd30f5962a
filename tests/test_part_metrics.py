"""Tests for pointgst.part_metrics: hand-worked IoUs, restriction to the category's parts, batching / merging
invariance, a transcription of the official Point-MAE evaluation loop, and the errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointgst.part_metrics import PartSegmentationMeter, format_per_category, restrict_to_category, shape_part_ious

# Two categories: "Mug" owns parts 0, 1, 2 and "Cap" owns parts 3, 4 (P = 5 global part ids).
PARTS = [[0, 1, 2], [3, 4]]
NAMES = ["Mug", "Cap"]
# ShapeNetPart's 16 categories (global ids 0..49), for the randomised tests.
SHAPENET_PARTS = [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18], [19, 20, 21],
                  [22, 23], [24, 25, 26, 27], [28, 29], [30, 31, 32, 33, 34, 35], [36, 37], [38, 39, 40],
                  [41, 42, 43], [44, 45, 46], [47, 48, 49]]
SHAPENET_NAMES = [f"cat{c}" for c in range(16)]

# Hand example: 3 shapes of 6 points; shape 0 is a Mug, shapes 1 and 2 are Caps.
TARGETS = torch.tensor([[0, 0, 0, 1, 1, 1], [3, 3, 4, 4, 4, 4], [3, 3, 3, 4, 4, 4]])
PREDS = torch.tensor([[0, 0, 1, 1, 1, 1], [3, 4, 4, 4, 4, 4], [3, 3, 3, 4, 4, 4]])
CATEGORIES = torch.tensor([0, 1, 1])
# shape 0: part 0: 2 common / 3 in union; part 1: 3 / 4; part 2 in neither -> 1
# shape 1: part 3: 1 / 2; part 4: 4 / 5;  shape 2: all right -> 1, 1
SHAPE_IOUS = [[2 / 3, 3 / 4, 1.0], [1 / 2, 4 / 5], [1.0, 1.0]]
SHAPE_MIOUS = [(2 / 3 + 3 / 4 + 1) / 3, (1 / 2 + 4 / 5) / 2, 1.0]  # 29/36, 13/20, 1


def hand_logits() -> torch.Tensor:
    """Logits (3, 6, 5) whose restricted argmax is PREDS; at two points another category's part scores highest."""
    logits = torch.zeros(3, 6, 5)
    logits.scatter_(2, PREDS.unsqueeze(2), 2.0)
    logits[0, 2, 3] = 5.0  # a Mug point: the Cap part 3 wins unrestricted, part 1 among the Mug's parts
    logits[1, 1, 0] = 5.0  # a Cap point: the Mug part 0 wins unrestricted, part 4 among the Cap's parts
    return logits


def random_batch(num_shapes: int, num_points: int, seed: int, categories: torch.Tensor | None = None):
    """Random ShapeNetPart-like (logits (B, N, 50), targets (B, N), categories (B,)) with targets in each category."""
    gen = torch.Generator().manual_seed(seed)
    if categories is None:
        categories = torch.randint(0, 16, (num_shapes,), generator=gen)
    targets = torch.stack([torch.tensor(SHAPENET_PARTS[c])[torch.randint(0, len(SHAPENET_PARTS[c]), (num_points,),
                                                                         generator=gen)] for c in categories.tolist()])
    logits = torch.randn(len(categories), num_points, 50, generator=gen)
    logits.scatter_add_(2, targets.unsqueeze(2), torch.full(targets.shape + (1,), 1.5))  # mostly right
    return logits, targets, categories


def official_metrics(logits: np.ndarray, target: np.ndarray) -> dict:
    """Transcription of the test loop of Point-MAE segmentation/main.py (category taken from target[i, 0])."""
    seg_classes = {name: parts for name, parts in zip(SHAPENET_NAMES, SHAPENET_PARTS)}
    seg_label_to_cat = {label: cat for cat, labels in seg_classes.items() for label in labels}
    pred = np.zeros(target.shape, dtype=np.int32)
    for i in range(len(target)):
        cat = seg_label_to_cat[target[i, 0]]
        pred[i, :] = np.argmax(logits[i][:, seg_classes[cat]], 1) + seg_classes[cat][0]
    shape_ious = {cat: [] for cat in seg_classes}
    for segp, segl in zip(pred, target):
        cat = seg_label_to_cat[segl[0]]
        part_ious = [0.0] * len(seg_classes[cat])
        for label in seg_classes[cat]:
            if np.sum(segl == label) == 0 and np.sum(segp == label) == 0:
                part_ious[label - seg_classes[cat][0]] = 1.0
            else:
                part_ious[label - seg_classes[cat][0]] = np.sum((segl == label) & (segp == label)) / float(
                    np.sum((segl == label) | (segp == label)))
        shape_ious[cat].append(np.mean(part_ious))
    all_shape_ious = [iou for ious in shape_ious.values() for iou in ious]
    per_category = {cat: float(np.mean(ious)) for cat, ious in shape_ious.items()}
    return {"accuracy": np.sum(pred == target) / float(target.size), "class_miou": np.mean(list(per_category.values())),
            "instance_miou": np.mean(all_shape_ious), "per_category": per_category}


# --------------------------------------------------------------------------- hand-worked values


def test_shape_part_ious_hand_values():
    for pred, target, parts, expected in zip(PREDS, TARGETS, [PARTS[0], PARTS[1], PARTS[1]], SHAPE_IOUS):
        ious = shape_part_ious(pred, target, parts)
        assert ious.dtype == torch.float64 and ious.tolist() == expected  # each a single correctly-rounded division


def test_shape_part_ious_follows_the_order_of_parts():
    assert shape_part_ious(PREDS[0], TARGETS[0], [2, 1, 0]).tolist() == [1.0, 3 / 4, 2 / 3]


def test_restriction_overrides_the_unrestricted_argmax():
    logits = hand_logits()
    restricted = restrict_to_category(logits, CATEGORIES, PARTS)
    assert restricted.dtype == torch.int64 and torch.equal(restricted, PREDS)
    assert logits[0, 2].argmax() == 3 and logits[1, 1].argmax() == 0  # what an unrestricted argmax would pick


def test_restriction_with_unordered_ids_breaks_ties_towards_the_first_listed_part():
    logits = torch.zeros(2, 3, 4)
    logits[1, 2, 1] = 1.0
    restricted = restrict_to_category(logits, torch.tensor([0, 1]), [[3, 0], [2, 1]])
    assert restricted.tolist() == [[3, 3, 3], [2, 2, 1]]


def test_meter_hand_example_instance_and_class_miou_differ():
    meter = PartSegmentationMeter(PARTS, NAMES)
    meter.update(hand_logits(), TARGETS, CATEGORIES)
    result = meter.compute()
    mug, cap = SHAPE_MIOUS[0], (SHAPE_MIOUS[1] + SHAPE_MIOUS[2]) / 2  # 29/36 and 33/40
    assert result["instance_miou"] == pytest.approx(sum(SHAPE_MIOUS) / 3, rel=1e-7)  # 221/270
    assert result["class_miou"] == pytest.approx((mug + cap) / 2, rel=1e-7)  # 587/720
    assert result["instance_miou"] == pytest.approx(221 / 270, rel=1e-7)
    assert result["class_miou"] == pytest.approx(587 / 720, rel=1e-7)
    assert result["accuracy"] == 16 / 18  # 2 wrong points out of 18
    assert result["shapes"] == 3
    assert result["per_category"] == {"Mug": {"miou": pytest.approx(29 / 36, rel=1e-7), "shapes": 1},
                                      "Cap": {"miou": pytest.approx(33 / 40, rel=1e-7), "shapes": 2}}
    assert all(type(v) is float for v in (result["instance_miou"], result["class_miou"], result["accuracy"]))


def test_meter_accepts_predictions_as_well_as_logits():
    meter = PartSegmentationMeter(PARTS, NAMES)
    meter.update(PREDS, TARGETS, CATEGORIES)
    from_logits = PartSegmentationMeter(PARTS, NAMES)
    from_logits.update(hand_logits(), TARGETS, CATEGORIES)
    assert meter.compute() == from_logits.compute()


def test_absent_category_is_left_out_of_class_miou():
    meter = PartSegmentationMeter(PARTS, NAMES)
    meter.update(PREDS[1:], TARGETS[1:], CATEGORIES[1:])  # Caps only
    result = meter.compute()
    assert list(result["per_category"]) == ["Cap"]
    assert result["class_miou"] == result["per_category"]["Cap"]["miou"] == pytest.approx(33 / 40, rel=1e-7)
    assert result["instance_miou"] == pytest.approx(33 / 40, rel=1e-7)


def test_format_per_category():
    meter = PartSegmentationMeter(PARTS, NAMES)
    meter.update(PREDS, TARGETS, CATEGORIES)
    assert format_per_category(meter.compute()) == "\n".join([
        "category       shapes        %",
        "Mug                 1    80.56",
        "Cap                 2    82.50",
        "------------------------------",
        "class mIoU               81.53",
        "instance mIoU       3    81.85",
        "accuracy                 88.89",
    ])


# --------------------------------------------------------------------------- official loop, batching, merging


def test_matches_the_official_evaluation_loop():
    categories = torch.arange(16).repeat(3)  # every category present, as on the full test set
    logits, targets, categories = random_batch(48, 12, seed=1, categories=categories)
    meter = PartSegmentationMeter(SHAPENET_PARTS, SHAPENET_NAMES)
    meter.update(logits, targets, categories)
    result, official = meter.compute(), official_metrics(logits.numpy(), targets.numpy())
    for key in ("accuracy", "class_miou", "instance_miou"):
        assert result[key] == pytest.approx(official[key], rel=1e-12, abs=0)
    assert {name: row["miou"] for name, row in result["per_category"].items()} == pytest.approx(
        official["per_category"], rel=1e-12, abs=0)


def test_one_batch_several_batches_merged_meters_and_summed_states_agree():
    logits, targets, categories = random_batch(20, 16, seed=2)
    whole = PartSegmentationMeter(SHAPENET_PARTS, SHAPENET_NAMES)
    whole.update(logits, targets, categories)
    chunked = PartSegmentationMeter(SHAPENET_PARTS, SHAPENET_NAMES)
    for start in range(0, 20, 3):
        chunked.update(logits[start:start + 3], targets[start:start + 3], categories[start:start + 3])
    first, second = PartSegmentationMeter(SHAPENET_PARTS, SHAPENET_NAMES), PartSegmentationMeter(
        SHAPENET_PARTS, SHAPENET_NAMES)
    first.update(logits[:7], targets[:7], categories[:7])
    second.update(logits[7:], targets[7:], categories[7:])
    summed = PartSegmentationMeter(SHAPENET_PARTS, SHAPENET_NAMES)
    summed.load_state(first.state() + second.state())  # what all_reduce(SUM) of the states gives
    expected = whole.compute()
    assert expected["shapes"] == 20
    for meter in (chunked, first.merge(second), summed):
        result = meter.compute()
        assert result["shapes"] == expected["shapes"] and result["accuracy"] == expected["accuracy"]
        for key in ("class_miou", "instance_miou"):
            assert result[key] == pytest.approx(expected[key], rel=1e-12, abs=0)
        assert result["per_category"].keys() == expected["per_category"].keys()
        for name, row in expected["per_category"].items():
            assert result["per_category"][name] == {"miou": pytest.approx(row["miou"], rel=1e-12, abs=0),
                                                    "shapes": row["shapes"]}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("scores, targets, categories, match", [
    (hand_logits()[:, :5], TARGETS, CATEGORIES, r"scores must be logits \(B, N, P\) or predictions"),
    (PREDS.float(), TARGETS, CATEGORIES, "predictions .* must be integer part ids"),
    (PREDS, TARGETS.float(), CATEGORIES, "targets must be an integer tensor of shape"),
    (PREDS, TARGETS, CATEGORIES[:2], r"categories must be an integer tensor of shape \(B,\) = \(3,\)"),
    (PREDS, TARGETS, torch.tensor([0, 1, 2]), r"categories must lie in \[0, 2\)"),
    (PREDS, TARGETS, torch.tensor([0, 0, 1]), r"targets\[1, 0\] = 3 is not a part of category 0 .*categories\[b\]"),
    (hand_logits().argmax(2), TARGETS, CATEGORIES, r"predictions\[0, 2\] = 3 is not a part of category 0 .*logits"),
    (hand_logits()[..., :4], TARGETS, CATEGORIES, "logits have P = 4 part scores but parts_of_category uses part id 4"),
    (torch.full((3, 6, 5), float("nan")), TARGETS, CATEGORIES, "logits contain NaN"),
])
def test_update_rejects_bad_input(scores, targets, categories, match):
    with pytest.raises(ValueError, match=match):
        PartSegmentationMeter(PARTS, NAMES).update(scores, targets, categories)


@pytest.mark.parametrize("parts, names, match", [
    ([], [], "parts_of_category must be a non-empty list"),
    ([[0, 1], []], NAMES, r"parts_of_category\[1\] = \[\] must be a non-empty list"),
    ([[0, 1], [2, 2]], NAMES, r"parts_of_category\[1\] = \[2, 2\] must .* distinct"),
    ([[0, -1], [2]], NAMES, "non-negative"),
    ([[0, 1.0], [2]], NAMES, "int part ids"),
    (PARTS, ["Mug"], "category_names must hold 2 distinct names"),
])
def test_meter_rejects_bad_configuration(parts, names, match):
    with pytest.raises(ValueError, match=match):
        PartSegmentationMeter(parts, names)


def test_state_merge_and_compute_errors():
    meter = PartSegmentationMeter(PARTS, NAMES)
    with pytest.raises(ValueError, match=r"no shapes yet; call update\(\)"):
        meter.compute()
    with pytest.raises(ValueError, match=r"state must have shape \(6,\) for 2 categories"):
        meter.load_state(torch.zeros(5))
    with pytest.raises(ValueError, match="same parts_of_category"):
        meter.merge(PartSegmentationMeter([[0, 1], [2, 3, 4]], NAMES))
    with pytest.raises(ValueError, match=r"result lacks accuracy.*compute\(\)"):
        format_per_category({"per_category": {}, "class_miou": 0.5, "instance_miou": 0.5, "shapes": 1})


def test_function_errors():
    with pytest.raises(ValueError, match=r"pred and target must be integer tensors of the same shape \(N,\)"):
        shape_part_ious(PREDS[0], TARGETS[0, :5], PARTS[0])
    with pytest.raises(ValueError, match=r"logits must be a floating-point tensor of shape \(B, N, P\)"):
        restrict_to_category(PREDS, CATEGORIES, PARTS)
