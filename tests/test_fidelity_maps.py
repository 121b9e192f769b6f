"""Dense-map fidelity (`measure.fidelity`): IoU of the thresholded maps of detection/segmentation outputs."""

from __future__ import annotations

import numpy as np

from edgeslim.measure.fidelity import compare_outputs, map_iou, map_threshold


def test_iou_of_thresholded_probability_maps_by_hand() -> None:
    ref = np.zeros((1, 1, 8, 8), np.float32)
    ref[0, 0, :4, :4] = 0.9            # 16 pixels above 0.5
    got = np.zeros_like(ref)
    got[0, 0, 2:6, :4] = 0.7           # 16 pixels, 8 shared with ref -> IoU 8 / 24
    got[0, 0, 6, 6] = 0.5              # exactly at the threshold: not above it
    f = compare_outputs(["prob"], [[ref]], [[got]])
    row = f.per_output["prob"]
    assert row["map_threshold"] == 0.5
    assert abs(row["map_iou"] - 8 / 24) < 1e-12
    assert abs(f.iou - 8 / 24) < 1e-12 and f.as_dict()["map_iou"] == f.iou


def test_iou_pools_every_feed_and_is_one_when_both_maps_are_empty() -> None:
    a = np.zeros((1, 1, 16, 8), np.float32)
    b = a.copy()
    b[0, 0, 0, :2] = 0.8                                  # feed 2: ref 4 pixels, candidate 2 of them
    a2 = a.copy()
    a2[0, 0, 0, :4] = 0.8
    f = compare_outputs(["m"], [[a], [a2]], [[a], [b]])
    assert abs(f.per_output["m"]["map_iou"] - 2 / 4) < 1e-12
    assert map_iou(a, a, 0.5) == 1.0


def test_threshold_rule_signed_and_heat_maps_and_no_iou_for_small_outputs() -> None:
    assert map_threshold(np.array([-3.0, 2.0])) == 0.0            # logits: sigmoid crosses 0.5 at 0
    assert map_threshold(np.array([0.0, 4.0, 10.0])) == 5.0      # non-negative heat map: half its maximum
    assert map_threshold(np.array([0.0, 0.2, 1.0])) == 0.5
    logits = np.full((1, 2, 8, 9), -4.0, np.float32)
    logits[0, 0, 0, 0] = 3.0
    f = compare_outputs(["l"], [[logits]], [[logits]])
    assert f.per_output["l"]["map_threshold"] == 0.0 and f.per_output["l"]["map_iou"] == 1.0
    small = np.random.default_rng(0).random((2, 3, 4, 4)).astype(np.float32)  # 4x4: not a dense map
    scores = np.random.default_rng(1).random((2, 10)).astype(np.float32)
    f2 = compare_outputs(["s", "c"], [[small, scores]], [[small, scores]])
    assert f2.iou is None and "map_iou" not in f2.per_output["s"]


def test_dense_map_rule_per_time_step_scores_and_states_are_not_maps() -> None:
    """A CRNN's [N, T, C] scores (signed logits, or softmax rows) and a recurrent state [layers, N, H] are not
    dense maps; a rank-3 probability map [N, H, W] and an NHWC map [N, H, W, C] are."""
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((1, 40, 97)).astype(np.float32)            # CRNN logits [N, T, C]
    e = np.exp(logits)
    soft = (e / e.sum(-1, keepdims=True)).astype(np.float32)                # CRNN probabilities: softmax rows
    state = np.tanh(rng.standard_normal((2, 16, 64))).astype(np.float32)    # LSTM state [layers, N, H]
    pmap = rng.random((1, 32, 24)).astype(np.float32)                       # [N, H, W] probability map
    nhwc = rng.random((1, 16, 16, 2)).astype(np.float32)                    # [N, H, W, C] segmentation
    names = ["logits", "soft", "state", "pmap", "nhwc"]
    outs = [logits, soft, state, pmap, nhwc]
    got = [o.copy() for o in outs]
    got[3][0, :16] = 0.0                                                    # half the map's rows switched off
    f = compare_outputs(names, [outs], [got])
    for n in ("logits", "soft", "state"):
        assert "map_iou" not in f.per_output[n], (n, f.per_output[n])
    assert f.per_output["soft"]["top1_agreement"] == 1.0
    want = np.count_nonzero(pmap[0, 16:] > 0.5) / np.count_nonzero(pmap > 0.5)
    assert abs(f.per_output["pmap"]["map_iou"] - want) < 1e-12
    assert f.per_output["nhwc"]["map_iou"] == 1.0 and f.iou == f.per_output["pmap"]["map_iou"]
