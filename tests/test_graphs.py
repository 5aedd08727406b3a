"""Ground-truth graphs and the scores of learned graphs, on a hand-written dataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dynsparse import cli, dataset, errors, graphs

STATE = ("qpos:slider", "qpos:hinge_1", "qvel:slider", "qvel:hinge_1")
ACTION = ("act:slide",)
IN = STATE + ACTION


def _jacobians() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 episodes x 3 steps; step (1, 2) is not valid. Entries nonzero by hand:

    - always: diagonal of J_s, and J_a[2, 0];
    - only at episode 0 step 1: J_s[0, 1]; only at episode 1 step 0: J_s[3, 2] = 1e-13 (below the
      absolute threshold 1e-12: zero) and J_a[3, 0] = 0.5.
    """
    js = np.zeros((2, 3, 4, 4))
    ja = np.zeros((2, 3, 4, 1))
    js[..., range(4), range(4)] = 1.0
    ja[..., 2, 0] = 2.0
    js[0, 1, 0, 1] = -3.0
    js[1, 0, 3, 2] = 1e-13
    ja[1, 0, 3, 0] = 0.5
    valid = np.ones((2, 3), bool)
    valid[1, 2] = False
    return js, ja, valid


@pytest.fixture()
def store(tmp_path):
    js, ja, valid = _jacobians()
    config = {"env": "CartpoleBalance", "episodes": 2, "steps": 3, "policy": {"name": "random"}, "seed": 0,
              "backend": "autodiff", "dtype": "float64", "check_every": 0, "batch_size": 2, "chunk_steps": 3,
              "fd_eps": 1e-6, "jacobian": "converged", "compare_definitions": False}
    layout = dataset.Layout(2, 3, STATE, ACTION, 2, 3, "float64")
    attrs = {"format": dataset.FORMAT, "format_version": dataset.FORMAT_VERSION, "env": "CartpoleBalance",
             "backend": "autodiff", "policy": json.dumps(config["policy"]), "seed": 0, "config": json.dumps(config),
             "jacobian": "converged"}
    out = tmp_path / "hand.zarr"
    dataset.create(out, layout, attrs)
    finite = valid.copy()
    js = np.where(valid[..., None, None], js, np.nan)
    ja = np.where(valid[..., None, None], ja, np.nan)
    arrays = {"state": np.zeros((2, 3, 4)), "action": np.zeros((2, 3, 1)), "next_state": np.zeros((2, 3, 4)),
              "J_s": js, "J_a": ja, "n_contacts": np.zeros((2, 3), np.int32), "reward": np.zeros((2, 3)),
              "warmstart": np.zeros((2, 3, 2)), "finite": finite, "valid": valid}
    dataset.write_unit(out, layout, 0, arrays)
    dataset.write_checkpoint(out, 1, 1, None)
    return out


def _expected_samples() -> np.ndarray:
    edges = np.zeros((5, 4, 5), bool)
    edges[:, range(4), range(4)] = True
    edges[:, 2, 4] = True
    edges[1, 0, 1] = True  # (episode 0, step 1)
    edges[3, 3, 4] = True  # (episode 1, step 0); J_s[3, 2] = 1e-13 is a zero
    return edges


def test_truth_by_hand(store):
    t = graphs.truth(dataset.open_dataset(store))
    assert t.in_names == IN and t.out_names == STATE and t.n_state == 4
    assert t.episode.tolist() == [0, 0, 0, 1, 1] and t.step.tolist() == [0, 1, 2, 0, 1]
    np.testing.assert_array_equal(t.samples, _expected_samples())
    expected_global = _expected_samples().any(axis=0)
    np.testing.assert_array_equal(t.global_graph, expected_global)
    assert t.nonzero_share[0, 1] == pytest.approx(1 / 5) and t.nonzero_share[0, 0] == 1.0
    # relative rule: 1e-13 against its row's norm (1.0) is still below 1e-12 relative
    assert not graphs.truth(dataset.open_dataset(store), 1e-12, "relative").samples[3, 3, 2]


def test_export_writes_masks_with_names_and_a_tidy_edge_list(store, tmp_path, capsys):
    out = tmp_path / "g.npz"
    assert cli.main(["graphs", str(store), "--out", str(out)]) == 0
    with np.load(out) as z:
        assert list(z["in_names"]) == list(IN) and list(z["out_names"]) == list(STATE)
        np.testing.assert_array_equal(z["samples"], _expected_samples())
        np.testing.assert_array_equal(z["global"], _expected_samples().any(axis=0))
        meta = json.loads(str(z["meta"]))
    assert meta["threshold"] == 1e-12 and meta["kind"] == "absolute" and meta["counted_steps"] == 5
    edges = pd.read_parquet(tmp_path / "g.parquet")
    assert list(edges.columns) == ["scope", "episode", "step", "matrix", "target", "source", "nonzero_share"]
    glob = edges[edges.scope == "global"]
    assert len(glob) == 7 and set(glob.matrix) == {"J_s", "J_a"}
    row = glob[(glob.target == "qpos:slider") & (glob.source == "qpos:hinge_1")]
    assert row.nonzero_share.item() == pytest.approx(0.2)
    assert len(edges[edges.scope == "sample"]) == int(_expected_samples().sum())
    assert edges[(edges.scope == "sample") & (edges.source == "act:slide") & (edges.target == "qvel:hinge_1")][["episode", "step"]].values.tolist() == [[1, 0]]
    # nothing is overwritten; the name must end in .npz
    before = out.read_bytes()
    assert cli.main(["graphs", str(store), "--out", str(out)]) == 2 and out.read_bytes() == before
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["graphs", str(store), "--out", str(tmp_path / "g.csv")]) == 2


def test_the_truth_scores_perfectly(store, tmp_path, capsys):
    out = tmp_path / "g.npz"
    graphs.export(dataset.open_dataset(store), out)
    result = graphs.score(dataset.open_dataset(store), out)
    for scope in ("global", "per_sample_mean", "per_sample_pooled"):
        assert (result[scope]["precision"], result[scope]["recall"], result[scope]["f1"], result[scope]["shd"]) == (1, 1, 1, 0)
    assert result["samples"] == 5
    assert cli.main(["score", str(store), str(out), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["global"]["shd"] == 0


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_hand_made_predictions_give_the_hand_computed_numbers(store, tmp_path):
    ds = dataset.open_dataset(store)
    truth_global = _expected_samples().any(axis=0)  # 7 edges
    pred = truth_global.copy()
    pred[0, 1] = False  # one false negative
    pred[1, 0] = True  # one false positive
    # names in another order: reversed inputs, rows rotated
    rows, cols = [1, 2, 3, 0], [4, 3, 2, 1, 0]
    path = _write(tmp_path / "p.npz", out_names=np.asarray(STATE)[rows], in_names=np.asarray(IN)[cols],
                  **{"global": pred[np.ix_(rows, cols)]})
    r = graphs.score(ds, path)
    g = r["global"]
    assert (g["tp"], g["fp"], g["fn"], g["shd"]) == (6, 1, 1, 2)
    assert g["precision"] == pytest.approx(6 / 7) and g["recall"] == pytest.approx(6 / 7) and g["f1"] == pytest.approx(6 / 7)
    # the global prediction against each step: steps have 5, 6 (ep 0 step 1) or 6 (ep 1 step 0) edges
    per = [graphs.graph_scores(s, pred) for s in _expected_samples()]
    assert r["per_sample_mean"]["recall"] == pytest.approx(np.mean([p["recall"] for p in per]))
    assert r["per_sample_pooled"]["shd"] == sum(p["shd"] for p in per)

    # continuous scores: a perfect ranking has AUROC = AUPRC = 1; the reversed one AUROC 0
    scores = np.where(truth_global, 0.9, 0.1)
    r = graphs.score(ds, _write(tmp_path / "s.npz", out_names=np.asarray(STATE), in_names=np.asarray(IN), **{"global": scores}))
    assert r["global"]["auroc"] == 1.0 and r["global"]["auprc"] == 1.0 and r["global"]["shd"] == 0
    r = graphs.score(ds, _write(tmp_path / "s2.npz", out_names=np.asarray(STATE), in_names=np.asarray(IN), **{"global": 1 - scores}))
    assert r["global"]["auroc"] == 0.0 and r["global"]["recall"] == 0.0

    # per-sample masks of two chosen steps
    samples = _expected_samples()[[1, 3]].copy()
    samples[1, 3, 4] = False  # miss the (episode 1, step 0) action edge
    r = graphs.score(ds, _write(tmp_path / "ps.npz", out_names=np.asarray(STATE), in_names=np.asarray(IN), samples=samples,
                                episode=np.array([0, 1]), step=np.array([1, 0])))
    assert r["samples"] == 2 and r["per_sample_pooled"]["fn"] == 1 and r["per_sample_mean"]["recall"] == pytest.approx((1 + 5 / 6) / 2)
    assert r["global"]["fn"] == 1  # the union of the two samples lacks J_a[3, 0]... and nothing else
    assert r["global"]["fp"] == 0


@pytest.mark.parametrize("arrays, message", [
    ({"in_names": np.asarray(IN), "global": np.ones((4, 5), bool)}, "lacks 'out_names'"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN)}, "neither 'global'"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN), "global": np.ones((5, 4), bool)}, "has shape (5, 4)"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN[:-1] + ("act:bogus",)), "global": np.ones((4, 5), bool)},
     "'act:bogus', not a variable"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN[:-1]), "global": np.ones((4, 4), bool)}, "lacks 'act:slide'"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN), "global": np.full((4, 5), np.nan)}, "NaN"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN), "global": np.full((4, 5), 2)}, "must be 0/1"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN), "samples": np.ones((1, 4, 5), bool),
      "episode": np.array([1]), "step": np.array([2])}, "(episode 1, step 2) is not a counted step"),
    ({"out_names": np.asarray(STATE), "in_names": np.asarray(IN), "samples": np.ones((1, 4, 5), bool)}, "needs integer 'episode'"),
])
def test_malformed_predictions_are_one_line(store, tmp_path, capsys, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(errors.UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        graphs.score(dataset.open_dataset(store), path)
    assert cli.main(["score", str(store), str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0]


def test_unreadable_prediction_file(store, tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_text("not a zip")
    with pytest.raises(errors.UserError, match="not a readable .npz"):
        graphs.score(dataset.open_dataset(store), bad)
    with pytest.raises(errors.UserError, match="does not exist"):
        graphs.score(dataset.open_dataset(store), tmp_path / "nope.npz")
