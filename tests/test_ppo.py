"""PPO policies: checkpoints, loading, acting, errors, and the colored-noise PPO distribution.

Fast tests use the committed checkpoints under ``policies/`` (trained on an H100, see the README);
the tiny CPU training run and a collection with a PPO policy are marked slow.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import one_error_line

from dynsparse import cli, errors, policies
from dynsparse.policies import checkpoint, ppo

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"
STUDY_ENVS = ("BallInCup", "CartpoleBalance", "CheetahRun", "ReacherHard", "FingerSpin", "FingerTurnEasy",
              "WalkerRun", "SwimmerSwimmer6")



def _fake_spec(name: str, obs: int, nu: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, nu=nu, env=types.SimpleNamespace(observation_size=obs))


@pytest.fixture()
def cartpole_ckpt(tmp_path) -> Path:
    dst = tmp_path / "CartpoleBalance"
    shutil.copytree(POLICIES / "CartpoleBalance", dst)
    return dst


@pytest.mark.parametrize("env", STUDY_ENVS)
def test_committed_checkpoints_load_and_name_their_env(env):
    meta, arrays = checkpoint.load(POLICIES / env)
    assert meta["env"] == env and meta["value_network"] == "omitted"
    assert meta["evaluation"]["return_mean"] == meta["curve"][-1]["return_mean"]
    pol = ppo.PPOPolicy(POLICIES / env)
    assert arrays["normalizer/mean"].shape == (pol.n_obs + pol.nu,)  # the training observation carried eps_t
    assert pol.beta == meta["noise"]["beta"] == 0.5


def test_committed_cartpole_checkpoint_fits_the_playground_env(cartpole):
    pol = ppo.PPOPolicy(POLICIES / "CartpoleBalance")
    pol.check_env(cartpole)  # name, observation size and action size agree
    assert cartpole.env.observation_size == pol.n_obs


def _brax_networks(meta: dict, arrays: dict):
    from brax.training.acme import running_statistics

    from dynsparse.policies import ppo_networks

    nu, n_obs = meta["action_size"], meta["obs_size"]
    factory = ppo_networks.make_network_factory(nu, meta["network"]["policy_hidden"], meta["network"]["value_hidden"],
                                                var_scale=meta["network"].get("var_scale", 1.0))
    nets = factory((n_obs + nu,), nu, preprocess_observations_fn=running_statistics.normalize)
    tree = checkpoint.unflatten(arrays)
    norm = running_statistics.init_state(jax.ShapeDtypeStruct((n_obs + nu,), jnp.float32)).replace(
        mean=jnp.asarray(tree["normalizer"]["mean"]), std=jnp.asarray(tree["normalizer"]["std"]),
        summed_variance=jnp.asarray(tree["normalizer"]["summed_variance"]),
    )
    return nets, norm, tree["policy"]


@pytest.mark.parametrize("env,var_scale", [("CartpoleBalance", 1.0), ("CheetahRun", 1.0), ("CheetahRun", 2.5)])
def test_ppo_actions_equal_brax_networks_sampling_with_the_same_eps(env, var_scale, tmp_path):
    folder = POLICIES / env
    if var_scale != 1.0:  # a policy trained with --exploration-scale: brax's var_scale widens sigma
        meta, arrays = checkpoint.load(folder)
        meta = {k: v for k, v in meta.items() if k not in ("params_file", "params_sha256")}
        meta["network"] = {**meta["network"], "var_scale": var_scale}
        folder = checkpoint.save(tmp_path / env, meta, arrays)
    meta, arrays = checkpoint.load(folder)
    nets, norm, params = _brax_networks(meta, arrays)
    pol = ppo.PPOPolicy(folder)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(16, pol.n_obs)).astype(np.float32)
    eps = rng.normal(size=(16, pol.nu)).astype(np.float32)
    logits = nets.policy_network.apply(norm, params, jnp.concatenate([obs, eps], axis=-1))
    dist = nets.parametric_action_distribution
    expected = dist.postprocess(dist.sample_no_postprocessing(logits, jax.random.PRNGKey(0)))
    low, high = -jnp.ones(pol.nu), jnp.ones(pol.nu)
    got = jax.vmap(lambda o, e: pol.act(o, e, low, high))(obs, eps)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
    det = ppo.PPOPolicy(folder, scale=0.0)
    got_det = jax.vmap(lambda o, e: det.act(o, e, low, high))(obs, eps)
    np.testing.assert_allclose(np.asarray(got_det), np.asarray(dist.mode(logits)), rtol=1e-5, atol=1e-6)


def test_identical_inputs_and_seeds_give_identical_actions():
    a, b = ppo.PPOPolicy(POLICIES / "CheetahRun"), ppo.PPOPolicy(POLICIES / "CheetahRun")
    na, nb = a.batch_noise(7, np.arange(3), 40, a.nu), b.batch_noise(7, np.arange(3), 40, b.nu)
    np.testing.assert_array_equal(na, nb)
    obs = np.random.default_rng(1).normal(size=(a.n_obs,))
    low, high = -jnp.ones(a.nu), jnp.ones(a.nu)
    for t in range(5):
        np.testing.assert_array_equal(np.asarray(a.act(obs, na[0, t], low, high)), np.asarray(b.act(obs, nb[0, t], low, high)))
    assert not np.array_equal(na[0], na[1])


def test_config_round_trip_records_the_checkpoint():
    pol = policies.make("ppo", checkpoint=str(POLICIES / "ReacherHard"), beta=1.0, scale=0.5)
    cfg = pol.config()
    assert cfg["sha256"] == pol.meta["params_sha256"] and cfg["beta"] == 1.0 and cfg["scale"] == 0.5
    assert cfg["env"] == "ReacherHard" and cfg["trained_beta"] == 0.5
    assert policies.from_config(json.loads(json.dumps(cfg))).config() == cfg


def test_colored_normal_tanh_uses_eps_and_keeps_brax_log_prob_and_entropy():
    from brax.training import distribution

    from dynsparse.policies.ppo_networks import ColoredNormalTanh

    rng = np.random.default_rng(2)
    loc, raw, eps = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(3))
    params = jnp.concatenate([loc, raw, eps], axis=-1)
    colored, plain = ColoredNormalTanh(3), distribution.NormalTanhDistribution(3)
    assert colored.param_size == 9
    sigma = jax.nn.softplus(raw) + 0.001
    np.testing.assert_allclose(colored.sample_no_postprocessing(params, jax.random.PRNGKey(0)), loc + sigma * eps, rtol=1e-6)
    x = loc + 0.3
    np.testing.assert_allclose(colored.log_prob(params, x), plain.log_prob(params[..., :6], x), rtol=1e-6)
    key = jax.random.PRNGKey(3)
    np.testing.assert_allclose(colored.entropy(params, key), plain.entropy(params[..., :6], key), rtol=1e-6)


# --- errors: one clear line each -------------------------------------------------------------


def test_missing_checkpoint(tmp_path):
    with pytest.raises(errors.UserError, match="no PPO checkpoint at .*not a directory"):
        ppo.PPOPolicy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.UserError, match="policy.json is missing"):
        ppo.PPOPolicy(tmp_path / "empty")


def test_corrupt_checkpoints(cartpole_ckpt):
    meta = json.loads((cartpole_ckpt / "policy.json").read_text())
    params = cartpole_ckpt / meta["params_file"]
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 0xFF
    params.write_bytes(bytes(data))
    with pytest.raises(errors.UserError, match="does not match the SHA-256"):
        ppo.PPOPolicy(cartpole_ckpt)
    params.unlink()
    with pytest.raises(errors.UserError, match="parameter file .* is missing"):
        ppo.PPOPolicy(cartpole_ckpt)
    (cartpole_ckpt / "policy.json").write_text("{not json")
    with pytest.raises(errors.UserError, match="policy.json is not valid JSON"):
        ppo.PPOPolicy(cartpole_ckpt)
    (cartpole_ckpt / "policy.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(errors.UserError, match="not a dynsparse PPO checkpoint"):
        ppo.PPOPolicy(cartpole_ckpt)


def test_changed_checkpoint_is_refused_by_digest(cartpole_ckpt):
    pol = ppo.PPOPolicy(cartpole_ckpt)
    with pytest.raises(errors.UserError, match="has changed since this run started"):
        ppo.PPOPolicy(cartpole_ckpt, sha256="0" * 64)
    assert ppo.PPOPolicy(cartpole_ckpt, sha256=pol.meta["params_sha256"]).n_obs == pol.n_obs


def test_other_env_and_mismatched_sizes_are_refused():
    pol = ppo.PPOPolicy(POLICIES / "CartpoleBalance")
    with pytest.raises(errors.UserError, match="trained on CartpoleBalance, not CheetahRun"):
        pol.check_env(_fake_spec("CheetahRun", pol.n_obs, pol.nu))
    with pytest.raises(errors.UserError, match=f"expects observations of size {pol.n_obs}; CartpoleBalance gives 7"):
        pol.check_env(_fake_spec("CartpoleBalance", 7, pol.nu))
    with pytest.raises(errors.UserError, match="has 1 actions; CartpoleBalance has 2"):
        pol.check_env(_fake_spec("CartpoleBalance", pol.n_obs, 2))


@pytest.mark.parametrize("kw, match", [
    ({"scale": -1.0}, "noise scale -1.0 must be a finite number >= 0"),
    ({"beta": 2.5}, "beta 2.5 is out of range"),
    ({"colour": 1}, "unknown PPO policy option"),
])
def test_bad_ppo_options(kw, match):
    with pytest.raises(errors.UserError, match=match):
        policies.make("ppo", checkpoint=str(POLICIES / "CartpoleBalance"), **kw)


def test_cli_collect_refuses_a_checkpoint_of_another_env(capsys, tmp_path):
    out = tmp_path / "x.zarr"
    code = cli.main(["collect", "CartpoleBalance", "--policy", f"ppo:{POLICIES / 'CheetahRun'}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "trained on CheetahRun, not CartpoleBalance" in one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize("argv, match", [
    (["--policy", "ppo"], "--policy ppo needs a checkpoint folder"),
    (["--policy", "random", "--noise-beta", "1"], "apply to colored and ppo policies"),
    (["--policy", "ppo:/definitely/not/here"], "no PPO checkpoint at /definitely/not/here"),
])
def test_cli_collect_policy_errors(capsys, tmp_path, argv, match):
    code = cli.main(["collect", "CartpoleBalance", *argv, "--out", str(tmp_path / "x.zarr")])
    assert code == 2 and match in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, match", [
    (["CheetahRunn"], "train-policy supports the DM-Control suite"),
    (["CartpoleBalance", "--set", "num_envs"], "must be KEY=VALUE"),
    (["CartpoleBalance", "--set", "warp_speed=9"], "cannot set 'warp_speed'"),
    (["CartpoleBalance", "--set", "num_envs=7"], "must be a multiple of num_envs (7)"),
    (["CartpoleBalance", "--set", "learning_rate=fast"], "learning_rate='fast' is not a valid float"),
    (["CartpoleBalance", "--noise-beta", "3"], "beta 3.0 is out of range"),
    (["CartpoleBalance", "--policy-hidden", "32,x"], "--policy-hidden: '32,x' is not allowed; allowed: integers > 0, comma-separated"),
])
def test_cli_train_policy_errors(capsys, tmp_path, argv, match):
    code = cli.main(["train-policy", *argv, "--out", str(tmp_path / "p")])
    assert code == 2 and match in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "p").exists()


def test_train_policy_refuses_a_non_empty_out(tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli.main(["train-policy", "CartpoleBalance", "--out", str(out), "--timesteps", "100"])
    assert code == 2 and "already exists and is not empty" in one_error_line(capsys.readouterr().err)
    assert (out / "keep.txt").read_text() == "mine"


def test_reproduce_names_every_missing_checkpoint(tmp_path, capsys):
    pol = tmp_path / "pols"
    shutil.copytree(POLICIES / "CartpoleBalance", pol / "CartpoleBalance")
    code = cli.main(["reproduce", "--quick", "--envs", "CartpoleBalance,CheetahRun,WalkerRun", "--policies", str(pol),
                     "--out", str(tmp_path / "study")])
    assert code == 2 and "has no checkpoint for CheetahRun, WalkerRun" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "study").exists()


def test_study_policy_for_each_env():
    from dynsparse import reproduce

    runs = {run.env: run for run in reproduce.quick(policies=str(POLICIES), noise_beta=1.0).validated().runs()}
    p = runs["WalkerRun"].policy
    assert p == {"name": "ppo", "checkpoint": str((POLICIES / "WalkerRun").resolve()), "beta": 1.0}
    assert runs["WalkerRun"].id.startswith("WalkerRun__ppo-WalkerRun-")
    assert all(run.policy == {"name": "random"} for run in reproduce.quick().runs())


def test_export_keeps_what_acting_needs(tmp_path, cartpole_ckpt):
    with pytest.raises(errors.UserError, match="already exists and is not empty"):
        checkpoint.export_policy(cartpole_ckpt, POLICIES / "CartpoleBalance")
    dst = checkpoint.export_policy(cartpole_ckpt, tmp_path / "exported")
    meta, arrays = checkpoint.load(dst)
    assert not any(k.startswith("value/") for k in arrays)
    assert meta["exported_from_sha256"] == checkpoint.read_meta(cartpole_ckpt)["params_sha256"]


def test_report_and_study_name_the_policy_and_its_return(tmp_path):
    from dynsparse import analysis, reproduce

    from dynsparse import collect

    cfg = reproduce.preflight(tmp_path / "study", reproduce.quick(envs=("CartpoleBalance", "ReacherHard"), policies=str(POLICIES)))
    label = analysis._policy_label(collect.CollectConfig(**cfg.runs()[0].collect_kwargs(cfg)).validated().policy)
    assert label == "ppo (eval return 999.8, beta 0.5, scale 1.0)"
    sentence = reproduce._policy_sentence(cfg)
    assert "CartpoleBalance 999.8" in sentence and "ReacherHard 974.0" in sentence and "beta as trained" in sentence
    assert not (tmp_path / "study").exists()  # preflight touches nothing
    plain = reproduce.quick(envs=("CartpoleBalance",))
    assert '<code>{"name": "random"}</code>' in reproduce._policy_sentence(plain)
