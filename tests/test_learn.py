"""Learnability: data handling, the model's Jacobian, zero-pattern recovery on a linear system, errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from dynsparse import cli, errors
from dynsparse.learn import data as data_lib
from dynsparse.learn import evaluate, model, run

# A sparse linear system s' = A s + B a: J_s = A and J_a = B at every sample.
A = np.array([[1.0, 0.5, 0.0], [0.0, 0.9, 0.0], [0.3, 0.0, 0.8]])
B = np.array([[0.0], [0.2], [0.0]])


def _linear(n_episodes: int = 10, steps: int = 60, seed: int = 0) -> data_lib.Transitions:
    rng = np.random.default_rng(seed)
    n = n_episodes * steps
    s = rng.normal(size=(n, 3)) * np.array([1.0, 10.0, 0.1])  # very different scales
    a = rng.uniform(-1, 1, size=(n, 1))
    return data_lib.Transitions(
        s=s, a=a, s_next=s @ A.T + a @ B.T, J_s=np.broadcast_to(A, (n, 3, 3)).copy(),
        J_a=np.broadcast_to(B, (n, 3, 1)).copy(), episode=np.repeat(np.arange(n_episodes), steps),
    )


def test_episode_split_has_no_overlap_and_covers_everything():
    tr = _linear()
    train, test, train_eps, test_eps = data_lib.split_by_episode(tr, 0.2, seed=3)
    assert set(train_eps).isdisjoint(test_eps) and len(train_eps) + len(test_eps) == 10 and len(test_eps) == 2
    assert set(np.unique(train.episode)) == set(train_eps) and set(np.unique(test.episode)) == set(test_eps)
    assert len(train) + len(test) == len(tr)
    again = data_lib.split_by_episode(tr, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], test_eps)


def test_too_few_episodes_to_split():
    with pytest.raises(errors.UserError, match="1 episode.* a split by episode needs at least 2"):
        data_lib.split_by_episode(_linear(n_episodes=1), 0.2, 0)


def test_normalisation_round_trips_and_chains_the_jacobian():
    tr = _linear()
    x, y = data_lib.inputs(tr), data_lib.targets(tr, residual=False)
    norm = data_lib.Normalizer.fit(x, y)
    again = data_lib.Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    for k in ("x_mean", "x_std", "y_mean", "y_std"):
        np.testing.assert_array_equal(getattr(again, k), getattr(norm, k))
    xn = (x - norm.x_mean) / norm.x_std
    np.testing.assert_allclose(xn * norm.x_std + norm.x_mean, x, rtol=1e-14, atol=1e-14)
    # y_n = M x_n for the linear system: the normalised Jacobian is exactly that M.
    yn = (y - norm.y_mean) / norm.y_std
    jn = data_lib.normalised_jacobian(data_lib.jacobian_targets(tr, False), norm)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", jn, xn), yn, atol=1e-10)
    jr = data_lib.jacobian_targets(tr, residual=True)
    np.testing.assert_allclose(jr[0, :, :3], A - np.eye(3))


def test_network_jacobian_matches_finite_differences_of_the_network():
    tr = _linear(n_episodes=2, steps=20)
    norm = data_lib.Normalizer.fit(data_lib.inputs(tr), data_lib.targets(tr, False))
    net = model.make_network(3, (32, 32))
    params = model.init_params(net, 4, seed=1)
    x = data_lib.inputs(tr)[:5]
    xn = (x - norm.x_mean) / norm.x_std
    jac = evaluate.raw_jacobian(net.apply, params, xn, norm, residual=False)
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)  # finite differences of the network in float64
    try:
        params64 = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)

        def f(xraw: np.ndarray) -> np.ndarray:  # raw [s, a] -> raw s'
            xn_ = jnp.asarray((xraw - norm.x_mean) / norm.x_std, jnp.float64)
            return np.asarray(net.apply(params64, xn_)) * norm.y_std + norm.y_mean

        for i in range(5):
            fd = np.zeros((3, 4))
            for j in range(4):
                h = 1e-6 * max(1.0, abs(x[i, j]))
                e = np.zeros(4)
                e[j] = h
                fd[:, j] = (f(x[i] + e) - f(x[i] - e)) / (2 * h)
            np.testing.assert_allclose(jac[i], fd, rtol=2e-3, atol=1e-5)
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_linear_model_with_sae_recovers_the_zero_pattern():
    tr = _linear()
    train, test, _, _ = data_lib.split_by_episode(tr, 0.2, 0)
    norm, arrays = run._prepare(train, residual=False, true_threshold=1e-12)
    opts = model.TrainOptions(epochs=400, batch_size=64, lr=1e-2, hidden=())
    apply, params, history = model.train("mse+sae_j", arrays(train), opts, seed=0)
    assert history[-1] < 1e-3 * history[0]
    test_data = arrays(test)
    jac = evaluate.raw_jacobian(apply, params, test_data["x"], norm, residual=False)
    pred = np.asarray(apply(params, jnp.asarray(test_data["x"], jnp.float32)))
    m = evaluate.metrics(pred, test_data["y"], jac, np.concatenate([test.J_s, test.J_a], axis=2), 1e-4, 1e-12)
    assert m["shd"] == 0 and m["zero_precision"] == 1.0 and m["zero_recall"] == 1.0
    assert m["relative_sparsity"] == pytest.approx(1.0) and m["global_zeros_true"] == 6
    np.testing.assert_allclose(jac[0], np.concatenate([A, B], axis=1), atol=2e-3)


def test_metrics_on_hand_made_jacobians():
    true = np.array([[[0.0, 1.0], [0.0, 2.0]], [[0.0, 1.0], [3.0, 0.0]]])  # zeros: (0,0),(1,0) | (0,0),(1,1)
    model_j = np.array([[[0.0, 1.0], [1e-7, 0.0]], [[0.0, 0.0], [3.0, 0.0]]])  # zeros: 3 | 3
    m = evaluate.metrics(np.zeros((2, 2)), np.ones((2, 2)), model_j, true, 1e-6, 1e-12)
    assert m["mse_norm"] == 1.0
    assert m["sparsity_true"] == 0.5 and m["sparsity_model"] == 0.75 and m["relative_sparsity"] == 1.5
    # sample 0: predicted {00,10,11}, true {00,10}: precision 2/3, recall 1; sample 1: predicted {00,01,11},
    # true {00,11}: precision 2/3, recall 1
    assert m["zero_precision"] == pytest.approx(2 / 3) and m["zero_recall"] == 1.0
    # global: true {00}; model {00, 11}: one entry differs
    assert m["shd"] == 1 and m["global_zeros_model"] == 2 and m["global_zeros_true"] == 1


def test_wilcoxon_pairs_runs_by_env_and_seed():
    rows = []
    for env in ("E1", "E2", "E3"):
        for seed in range(3):
            base = 1.0 + seed + (ord(env[1]) - 48)
            rows.append({"env": env, "seed": seed, "loss": "mse", "trained": True, **{m: base for m in run.METRICS}})
            rows.append({"env": env, "seed": seed, "loss": "mse+sae_j", "trained": True,
                         **{m: base - 0.1 * (1 + seed + 3 * (ord(env[1]) - 49)) for m in run.METRICS}})
    tests = {t["metric"]: t for t in run.wilcoxon_tests(rows, ["mse", "mse+sae_j"])}
    t = tests["mse_norm"]
    assert t["pairs"] == 9 and t["median_difference"] == pytest.approx(-0.5)
    from scipy import stats

    assert t["p_value"] == pytest.approx(stats.wilcoxon(np.arange(1, 10) * -0.1).pvalue)  # all 9 lower: 2/2^9


@pytest.mark.parametrize("losses, match", [
    ("mse,mse+l2_j", "unknown loss 'mse+l2_j'"),
    ("", "no loss given"),
])
def test_cli_learn_bad_losses(capsys, tmp_path, losses, match):
    code = cli.main(["learn", "x.zarr", "--losses", losses, "--out", str(tmp_path / "o")])
    assert code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _learn_bouncer(bouncer_store, tmp_path, capsys):
    out = tmp_path / "learn"
    code = cli.main(["learn", str(bouncer_store), "--quick", "--epochs", "3", "--seeds", "1", "--hidden", "16,16",
                     "--test-fraction", "0.34", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["loss"]) == ["mse", "untrained", *model.LOSSES[1:]]
    assert (runs["s_per_epoch"].dropna() > 0).all() and (runs["sparsity_true"] > 0).all()
    summary = json.loads((out / "learn.json").read_text())
    env = summary["envs"]["Bouncer"]
    assert set(env["train_episodes"]).isdisjoint(env["test_episodes"]) and len(env["test_episodes"]) == 1
    assert len(pd.read_csv(out / "tests.csv")) == 4 * len(run.METRICS)
    for stem in ("mse", "sparsity"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
    code = cli.main(["learn", str(bouncer_store), "--quick", "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    return out


def test_learn_end_to_end_on_a_collected_dataset(bouncer_store, tmp_path, capsys):
    _learn_bouncer(bouncer_store, tmp_path, capsys)


def test_report_includes_a_learn_folder(bouncer_store, bouncer_analysis, tmp_path, capsys):
    out = _learn_bouncer(bouncer_store, tmp_path, capsys)
    report = tmp_path / "report"
    assert cli.main(["report", str(bouncer_analysis), str(out), "--out", str(report)]) == 0
    page = (report / "index.html").read_text()
    assert "Learnability" in page and 'data-kind="learn_mse"' in page and 'data-kind="learn_sparsity"' in page
    assert "mse+sae_j" in page and "Tests against mse" in page
    assert json.loads((report / "report.json").read_text())["learn"] == [str(out)]
    code = cli.main(["report", str(out), "--out", str(tmp_path / "r2")])
    assert code == 2 and "needs at least one `dynsparse analyze` folder" in capsys.readouterr().err


def test_mixed_environment_definitions_are_refused(bouncer_store, tmp_path, capsys, monkeypatch):
    real = data_lib.load

    def fake(path):
        tr, info = real(str(path).replace("#second", ""))
        if str(path).endswith("second"):
            info = {**info, "state_names": info["state_names"][::-1]}
        return tr, info

    monkeypatch.setattr(data_lib, "load", fake)
    with pytest.raises(errors.UserError, match="both say env 'Bouncer' but have different state or action variables"):
        run.load_groups([bouncer_store, str(bouncer_store) + "#second"])


def test_datasets_of_different_environments_need_per_env(bouncer_store, tmp_path, capsys, monkeypatch):
    real = data_lib.load

    def fake(path):
        tr, info = real(str(path).replace("#other", ""))
        if str(path).endswith("#other"):
            info = {**info, "env": "OtherEnv"}
        return tr, info

    monkeypatch.setattr(data_lib, "load", fake)
    paths = [bouncer_store, str(bouncer_store) + "#other"]
    with pytest.raises(errors.UserError, match=r"datasets of different environments mixed in one run: Bouncer \(.*\), OtherEnv"):
        run.load_groups(paths)
    assert sorted(run.load_groups(paths, per_env=True)) == ["Bouncer", "OtherEnv"]
    code = cli.main(["learn", *map(str, paths), "--out", str(tmp_path / "o")])
    assert code == 2 and "--per-env" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_learn_figures_average_seeds_per_env_and_count_zeros(tmp_path):
    """``render.learn_figures``: one value per environment (the mean over its seeds, non-finite
    values left out), zeros counted under a log axis; both figures written as PNG and SVG."""
    from dynsparse.render import learn_figures

    rows = [
        {"env": "A", "loss": "mse", "seed": 0, "mse_norm": 1.0, "relative_sparsity": 0.0},
        {"env": "A", "loss": "mse", "seed": 1, "mse_norm": 3.0, "relative_sparsity": float("nan")},
        {"env": "B", "loss": "mse", "seed": 0, "mse_norm": 0.5, "relative_sparsity": 2.0},
        {"env": "A", "loss": "untrained", "seed": 0, "mse_norm": 9.0, "relative_sparsity": 0.1},
    ]
    np.testing.assert_array_equal(learn_figures._per_env(rows, "mse", "mse_norm"), [2.0, 0.5])
    np.testing.assert_array_equal(learn_figures._per_env(rows, "mse", "relative_sparsity"), [0.0, 2.0])
    fig = learn_figures.boxplot(rows, ["mse"], "relative_sparsity", "sparsity", 1.0)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["1 at 0"] and fig.axes[0].get_yscale() == "log"
    written = learn_figures.write(tmp_path, rows, ["mse"])
    assert sorted(p.name for p in written) == ["mse.png", "mse.svg", "sparsity.png", "sparsity.svg"]
