"""Q2/Q3/contact/coverage/threshold metrics on hand-made arrays with answers worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from dynsparse import errors
from dynsparse.metrics import contacts, coverage, embedding, local, sparsity, temporal, thresholds


def make_masks(js, ja, counted, n_contacts=None, valid=None):
    """Masks from explicit bool arrays: js (E,T,o,i), ja (E,T,o,k)."""
    js, ja, counted = np.asarray(js, bool), np.asarray(ja, bool), np.asarray(counted, bool)
    e, t, o, i = js.shape
    k = ja.shape[-1]
    valid = counted.copy() if valid is None else np.asarray(valid, bool)
    nc = np.zeros((e, t), np.int64) if n_contacts is None else np.asarray(n_contacts, np.int64)
    return sparsity.Masks(
        J_s=js & counted[..., None, None], J_a=ja & counted[..., None, None], counted=counted, valid=valid,
        n_contacts=nc, out=tuple(f"o{j}" for j in range(o)), state_in=tuple(f"s{j}" for j in range(i)),
        action_in=tuple(f"a{j}" for j in range(k)), threshold=1e-12, kind="absolute",
    )


def _one_entry(seq_by_episode, counted=None):
    """Masks with a 1x1 J_s whose zero decisions are the given 0/1 sequences, and a 1x1 J_a that
    is never zero."""
    z = np.asarray(seq_by_episode, bool)
    e, t = z.shape
    counted = np.ones((e, t), bool) if counted is None else np.asarray(counted, bool)
    return make_masks(z[:, :, None, None], np.zeros((e, t, 1, 1), bool), counted)


# ----------------------------------------------------------------------------- Q2 local


def test_per_sample_sparsity_by_hand():
    # 1 episode, 3 steps; J_s 2x2, J_a 2x1. Step 2 is not counted.
    js = np.zeros((1, 3, 2, 2), bool)
    ja = np.zeros((1, 3, 2, 1), bool)
    js[0, 0] = [[True, False], [False, False]]   # 1/4 ; J_a 0/2 ; both 1/6
    ja[0, 1] = [[True], [True]]                  # J_s 0/4 ; J_a 2/2 ; both 2/6
    js[0, 2] = True                              # not counted: must not appear
    m = make_masks(js, ja, [[True, True, False]])
    sp = local.per_sample_sparsity(m)
    assert sp["J_s"][0, :2].tolist() == [0.25, 0.0]
    assert sp["J_a"][0, :2].tolist() == [0.0, 1.0]
    assert sp["both"][0, :2].tolist() == pytest.approx([1 / 6, 2 / 6])
    assert np.isnan(sp["both"][0, 2])


def test_histogram_bins_from_integer_counts_and_mean():
    # 10 entries (J_s 2x5, J_a 2x0 not allowed -> use J_a 1 column with 2 rows: 12 entries total).
    # Use J_s alone: 1x10 -> sparsity k/10 exactly; 0.3 must land in bin [0.3, 0.4), 1.0 in the last.
    e, t = 1, 5
    js = np.zeros((e, t, 1, 10), bool)
    for step, k in enumerate([0, 3, 3, 10, 9]):
        js[0, step, 0, :k] = True
    m = make_masks(js, np.zeros((e, t, 1, 1), bool), np.ones((e, t), bool))
    h = local.histogram(m, 0.1)
    assert len(h["edges"]) == 11
    assert h["J_s"]["counts"] == [1, 0, 0, 2, 0, 0, 0, 0, 0, 2]
    assert h["J_s"]["mean"] == pytest.approx(25 / 50)
    assert h["J_s"]["steps"] == 5
    h4 = local.histogram(m, 0.25)
    assert h4["J_s"]["counts"] == [1, 2, 0, 2]  # 0 | .3 .3 | - | .9 1.0


@pytest.mark.parametrize("bad", [0, 0.3, -0.1, 2, "x", float("nan")])
def test_histogram_bin_width_must_divide_one(bad):
    m = _one_entry([[0, 1]])
    with pytest.raises(errors.UserError, match="bin width"):
        local.histogram(m, bad)


def test_levels_counts_distinct_sparsity_values():
    m = _one_entry([[1, 1, 0, 1]])  # J_s levels: 1.0 x3, 0.0 x1; both: 1/2 x3, 0 x1
    lv = local.levels(m)
    assert [(r["sparsity"], r["steps"]) for r in lv["J_s"]] == [(0.0, 1), (1.0, 3)]
    assert [(r["zeros"], r["share"]) for r in lv["both"]] == [(0, 0.25), (1, 0.75)]


def test_zero_frequency_per_episode_and_pooled():
    m = _one_entry([[1, 1, 0, 0], [1, 1, 1, 0]], counted=[[1, 1, 1, 1], [1, 1, 0, 0]])
    per = local.zero_frequency_per_episode(m)
    assert per["J_s"][:, 0, 0].tolist() == [50.0, 100.0]
    assert per["J_a"][:, 0, 0].tolist() == [0.0, 0.0]
    pooled = local.zero_frequency_pooled(m)
    assert pooled["J_s"][0, 0] == pytest.approx(100 * 4 / 6)


# ----------------------------------------------------------------------------- Q3 temporal


def test_run_lengths_by_hand_with_censoring_and_gaps():
    # episode 0: 0 0 1 1 1 0  -> runs nonzero 2 (censored), zero 3, nonzero 1 (censored)
    # episode 1: 1 1 _ 1 0 0  (step 2 not counted) -> zero 2 (cens), zero 1 (cens), nonzero 2 (cens)
    # J_a entry (never zero) is constant in both episodes: excluded, counted as constant non-zero.
    m = _one_entry([[0, 0, 1, 1, 1, 0], [1, 1, 0, 1, 0, 0]], counted=[[1] * 6, [1, 1, 0, 1, 1, 1]])
    runs = temporal.run_lengths(m)
    got = sorted(zip(runs["episode"].tolist(), runs["zero"].tolist(), runs["length"].tolist(), runs["censored"].tolist()))
    assert got == sorted([(0, False, 2, True), (0, True, 3, False), (0, False, 1, True),
                          (1, True, 2, True), (1, True, 1, True), (1, False, 2, True)])
    assert set(runs["entry"].tolist()) == {0}
    assert runs["constant"] == {"zero": 0, "nonzero": 2}
    assert runs["pairs"] == 4
    s = temporal.run_summary(runs)
    assert s["zero_runs"]["mean"] == pytest.approx(2.0) and s["zero_runs"]["runs"] == 3
    assert s["zero_runs"]["uncensored_mean"] == 3.0
    assert s["nonzero_runs"]["mean"] == pytest.approx(5 / 3)
    assert s["nonzero_runs"]["uncensored_runs"] == 0 and s["nonzero_runs"]["uncensored_mean"] is None
    assert s["switching_pairs"] == 2


def test_constant_zero_entries_are_counted_separately():
    m = _one_entry([[1, 1, 1]])
    runs = temporal.run_lengths(m)
    assert runs["length"].size == 0
    assert runs["constant"] == {"zero": 1, "nonzero": 1}


def test_switches_per_step_ignores_uncounted_neighbours():
    m = _one_entry([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]], counted=[[1, 1, 1, 0, 1], [1] * 5])
    assert temporal.switches_per_step(m).tolist() == [[0, 1, 0, 0, 0], [0, 1, 0, 0, 0]]


def test_burstiness_known_values():
    assert temporal.burstiness([10, 10, 10]) == -1.0
    assert temporal.burstiness([1]) is None
    # gaps 1 and 3: mu 2, sigma 1 -> -1/3
    assert temporal.burstiness([1, 3]) == pytest.approx(-1 / 3)


def test_clustering_detects_bursts_and_not_periodic_events():
    t = 200
    counted = np.ones((1, t), bool)
    bursty = np.zeros((1, t), bool)
    bursty[0, [10, 11, 12, 13, 14, 150, 151, 152, 153, 154]] = True
    c = temporal.clustering(bursty, counted, n_shuffles=200, seed=1)
    assert c["event_steps"] == 10
    assert c["observed"]["burstiness"] > c["shuffled"]["burstiness_q95"]
    assert c["p_value"] < 0.02
    assert c["observed"]["share_gap_1"] == pytest.approx(8 / 9)
    periodic = np.zeros((1, t), bool)
    periodic[0, 5::20] = True
    p = temporal.clustering(periodic, counted, n_shuffles=100, seed=1)
    assert p["observed"]["burstiness"] == -1.0
    assert p["p_value"] == 1.0


def test_clustering_with_too_few_events():
    ev = np.zeros((1, 10), bool)
    ev[0, 3] = True
    c = temporal.clustering(ev, np.ones((1, 10), bool), n_shuffles=10)
    assert c["observed"]["burstiness"] is None and c["p_value"] is None


# ----------------------------------------------------------------------------- contacts


def test_sparsity_by_contacts():
    m = _one_entry([[1, 0, 1, 1]])
    m.n_contacts[:] = [[0, 2, 2, 0]]
    rows = contacts.sparsity_by_contacts(m)
    assert [(r["n_contacts"], r["steps"], r["J_s_mean"]) for r in rows] == [(0, 2, 1.0), (2, 2, 0.5)]
    assert rows[0]["both_mean"] == 0.5 and rows[1]["both_std"] == 0.25


def test_alignment_by_hand():
    # 10 steps. Contact count changes at step 4 (0 -> 1). The single entry switches at 4 and 8.
    m = _one_entry([[1, 1, 1, 1, 0, 0, 0, 0, 1, 1]])
    m.n_contacts[:] = [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
    rows = {r["k"]: r for r in contacts.alignment(m, (0, 1))}
    # k=0: candidate steps 1..9 (9); near = {4} -> chance 1/9; switch steps {4, 8}, 1 near.
    assert rows[0]["switch_steps"] == 2 and rows[0]["near_switch_steps"] == 1
    assert rows[0]["observed"] == 0.5 and rows[0]["chance"] == pytest.approx(1 / 9)
    assert rows[0]["lift"] == pytest.approx(4.5)
    # k=1: near = {3, 4, 5} -> chance 3/9
    assert rows[1]["chance"] == pytest.approx(3 / 9) and rows[1]["observed"] == 0.5
    assert rows[1]["contact_changes"] == 1
    assert 0 < rows[0]["p_value"] < 1


def test_switches_by_variable_ranks_rows_and_columns():
    # J_s 2x2: entry (o1, s0) switches twice, (o0, s1) once; J_a never.
    e, t = 1, 3
    js = np.zeros((e, t, 2, 2), bool)
    js[0, :, 1, 0] = [True, False, True]
    js[0, :, 0, 1] = [False, True, True]
    m = make_masks(js, np.zeros((e, t, 2, 1), bool), np.ones((e, t), bool))
    r = contacts.switches_by_variable(m)
    assert [(x["variable"], x["switches"]) for x in r["rows"]] == [("o1", 2), ("o0", 1)]
    assert [(x["variable"], x["switches"]) for x in r["state_columns"]] == [("s0", 2), ("s1", 1)]
    assert r["rows"][0]["share"] == pytest.approx(2 / 3)
    assert r["action_columns"] == [{"variable": "a0", "switches": 0, "share": 0.0}]


# ----------------------------------------------------------------------------- coverage


def test_coverage_curve_by_hand():
    # 2 episodes x 3 steps, J_s 1x3: entry 0 non-zero first at pooled step index 1, entry 1 at
    # index 4 (episode 1, step 1), entry 2 never (global zero). J_a 1x1 never zero.
    js = np.ones((2, 3, 1, 3), bool)
    js[0, 1, 0, 0] = False
    js[1, 1, 0, 1] = False
    m = make_masks(js, np.zeros((2, 3, 1, 1), bool), np.ones((2, 3), bool))
    c = coverage.global_zero_curve(m, n_points=50)
    assert c["n_steps"] == 6 and c["steps"] == [1, 2, 3, 4, 5, 6]
    assert c["J_s"] == [3, 2, 2, 2, 1, 1]
    assert c["J_s_by_episode"] == [2, 1]
    assert c["J_a"] == [0] * 6
    assert c["last_change"] == {"J_s": 5, "J_a": 1}


# ----------------------------------------------------------------------------- thresholds


def _dataset(js, ja, valid):
    e, t = valid.shape
    ds = xr.Dataset(
        {"J_s": (("episode", "step", "out", "state_in"), js), "J_a": (("episode", "step", "out", "action_in"), ja),
         "valid": (("episode", "step"), valid), "finite": (("episode", "step"), valid)},
        coords={"out": ["o0", "o1"], "state_in": ["s0", "s1"], "action_in": ["a0"]},
        attrs={"env": "hand", "policy": json.dumps({"name": "random"})},
    )
    return ds.chunk({"episode": 1})


def test_threshold_sensitivity_by_hand():
    js = np.zeros((1, 2, 2, 2))
    js[0, 0] = [[1e-14, 1e-10], [3.0, 4.0]]
    js[0, 1] = [[1e-5, 0.0], [0.0, 4.0]]
    ja = np.zeros((1, 2, 2, 1))
    ja[0, :, 1, 0] = 1.0
    ds = _dataset(js, ja, np.ones((1, 2), bool))
    r = thresholds.sensitivity(ds, absolute=(1e-12, 1e-4), relative=(1e-6, 0.5))
    a = r["absolute"]
    # |J_s| maxima per entry: 1e-5, 1e-10, 3, 4. below 1e-12: none; below 1e-4: two of four.
    assert a["global_zero_percent"]["J_s"] == [0.0, 50.0]
    # J_a maxima: 0, 1 -> one of two is zero at both thresholds
    assert a["global_zero_percent"]["J_a"] == [50.0, 50.0]
    assert a["global_zero_percent"]["both"] == pytest.approx([100 / 6, 300 / 6])
    # (step, entry) values of J_s below 1e-12: 1e-14, 0, 0 -> 3 of 8; below 1e-4: + 1e-10, 1e-5 -> 5/8
    assert a["mean_sparsity"]["J_s"] == [3 / 8, 5 / 8]
    assert a["steps"] == 2
    rel = r["relative"]
    # row 0 step 0: norm 1e-10 -> ratios 1e-4, 1; step 1: 1e-5 -> ratios 1, 0.
    # row 1 step 0: 0.6, 0.8; step 1: 0, 1.  Below 1e-6: the two 0s -> 2/8; below 0.5: + 1e-4 -> 3/8.
    assert rel["mean_sparsity"]["J_s"] == [2 / 8, 3 / 8]
    # per-entry max ratios: (0,0) 1, (0,1) 1, (1,0) .6, (1,1) 1 -> none below 0.5
    assert rel["global_zero_percent"]["J_s"] == [0.0, 0.0]
    # J_a: row 0 all zero -> ratio 0 (zero at every threshold); row 1 ratio 1
    assert rel["global_zero_percent"]["J_a"] == [50.0, 50.0]


def test_threshold_sensitivity_agrees_with_zero_mask():
    rng = np.random.default_rng(0)
    js = rng.normal(size=(2, 5, 2, 2)) * 10.0 ** rng.integers(-16, 0, size=(2, 5, 2, 2))
    ja = rng.normal(size=(2, 5, 2, 1)) * 10.0 ** rng.integers(-16, 0, size=(2, 5, 2, 1))
    ds = _dataset(js, ja, np.ones((2, 5), bool))
    r = thresholds.sensitivity(ds)
    for kind in ("absolute", "relative"):
        for i, tau in enumerate(r[kind]["thresholds"]):
            z = sparsity.zero_mask(js, tau, kind)
            assert r[kind]["mean_sparsity"]["J_s"][i] == pytest.approx(z.mean())
            assert r[kind]["global_zero_percent"]["J_s"][i] == pytest.approx(100 * z.all(axis=(0, 1)).mean())


# ----------------------------------------------------------------------------- embedding


def test_tsne_separates_two_clusters_and_lowers_perplexity():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 5))
    b = rng.normal(size=(30, 5)) + 20.0
    coords, used = embedding.tsne(np.concatenate([a, b]), perplexity=50, seed=0)
    assert coords.shape == (60, 2) and used == pytest.approx(59 / 3)
    ca, cb = coords[:30].mean(0), coords[30:].mean(0)
    near_a = np.linalg.norm(coords - ca, axis=1) < np.linalg.norm(coords - cb, axis=1)
    assert near_a[:30].all() and not near_a[30:].any()


def test_tsne_refuses_bad_perplexity():
    with pytest.raises(errors.UserError, match="perplexity"):
        embedding.tsne(np.zeros((10, 2)), perplexity=0)


def test_standardise_constant_column_is_zero():
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    assert embedding.standardise(x).tolist() == [[-1.0, 0.0], [1.0, 0.0]]


def test_contact_set_change_at_constant_count_is_a_change():
    # One contact throughout, but the touching pair changes at step 2 (A -> B).
    n = np.array([[1, 1, 1, 1]])
    pairs = np.array([[[1, 0], [1, 0], [0, 1], [0, 1]]], bool)
    valid = np.ones((1, 4), bool)
    assert contacts.contact_changes(n, valid).tolist() == [[False] * 4]
    assert contacts.contact_changes(n, valid, pairs).tolist() == [[False, False, True, False]]
    # a count change within one pair (1 -> 2 contact points) is a change too
    assert contacts.contact_changes(np.array([[1, 2, 2, 2]]), valid, np.ones((1, 4, 2), bool)).tolist() == [[False, True, False, False]]
