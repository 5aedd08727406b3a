"""Slow PPO tests: a tiny CPU training run, the colored-noise training wrapper, collection with PPO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from dynsparse import cli, errors
from dynsparse.policies import checkpoint, ppo, ppo_train

POLICIES = Path(__file__).resolve().parents[1] / "policies"
TINY = (("num_envs", 8), ("batch_size", 8), ("num_minibatches", 4), ("unroll_length", 10), ("num_evals", 2),
        ("num_eval_envs", 4), ("episode_length", 100), ("num_updates_per_batch", 2), ("num_resets_per_eval", 0))


@pytest.mark.slow
def test_tiny_training_run_saves_a_loadable_checkpoint(tmp_path, cartpole):
    config = ppo_train.TrainConfig(env="CartpoleBalance", timesteps=4000, noise_beta=1.0, overrides=TINY,
                                   policy_hidden=(8, 8), value_hidden=(16, 16))
    meta = ppo_train.train(config, tmp_path / "p")
    assert jax.config.read("jax_enable_x64")  # restored after training in float32
    assert meta["complete"] and meta["env"] == "CartpoleBalance" and meta["noise"]["beta"] == 1.0
    assert meta["training"]["steps_done"] >= 4000 and meta["training"]["budget_timesteps"] == 4000
    assert meta["training"]["hyperparameters"]["num_envs"] == 8
    assert meta["training"]["hyperparameters"]["discounting"] == 0.995  # published value kept
    assert meta["curve"][0]["steps"] == 0 and len(meta["curve"]) == 2
    assert np.isfinite(meta["evaluation"]["return_mean"]) and meta["evaluation"]["episodes"] == 4
    assert meta["versions"]["brax"] and meta["obs_size"] == 5 and meta["action_size"] == 1
    _, arrays = checkpoint.load(tmp_path / "p")
    assert arrays["policy/params/hidden_0/kernel"].shape == (5, 8)
    assert arrays["value/params/hidden_0/kernel"].shape == (5, 16)
    pol = ppo.PPOPolicy(tmp_path / "p")
    pol.check_env(cartpole)
    with pytest.raises(errors.UserError, match="already exists and is not empty"):
        ppo_train.train(config, tmp_path / "p")


@pytest.mark.slow
def test_colored_noise_wrapper_appends_eps_and_redraws_it_each_episode():
    from mujoco_playground import registry

    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        env = registry.load("CartpoleBalance", config_overrides={"impl": "jax"})
        n_obs, nu = env.observation_size, env.action_size
        wrap = ppo_train.make_colored_noise_wrapper(n_obs, nu, beta=2.0, length=5)
        wenv = wrap(env, episode_length=5, action_repeat=1)
        assert wenv.observation_size == n_obs + nu
        state = jax.jit(wenv.reset)(jax.random.split(jax.random.PRNGKey(0), 3))
        step = jax.jit(wenv.step)
        first = np.asarray(state.info["cn_noise"])
        assert first.shape == (3, 5, nu)
        np.testing.assert_array_equal(np.asarray(state.obs[:, n_obs:]), first[:, 0])
        for t in range(1, 5):
            state = step(state, np.zeros((3, nu), np.float32))
            np.testing.assert_array_equal(np.asarray(state.info["cn_t"]), t)
            np.testing.assert_array_equal(np.asarray(state.obs[:, n_obs:]), first[:, t])
        state = step(state, np.zeros((3, nu), np.float32))  # the 5th step ends the episode
        assert np.asarray(state.done).all()
        np.testing.assert_array_equal(np.asarray(state.info["cn_t"]), 0)
        redrawn = np.asarray(state.info["cn_noise"])
        assert not np.allclose(redrawn, first)
        np.testing.assert_array_equal(np.asarray(state.obs[:, n_obs:]), redrawn[:, 0])
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.slow
def test_collect_with_a_ppo_policy_records_it_and_refuses_a_changed_checkpoint(tmp_path, capsys):
    import xarray as xr

    ckpt = tmp_path / "CartpoleBalance"
    shutil.copytree(POLICIES / "CartpoleBalance", ckpt)
    out = tmp_path / "c.zarr"
    argv = ["collect", "CartpoleBalance", "--policy", f"ppo:{ckpt}", "--noise-beta", "1", "--noise-scale", "0.5",
            "--episodes", "2", "--steps", "30", "--chunk-steps", "30", "--out", str(out)]
    assert cli.main(argv) == 0
    ds = xr.open_zarr(out)
    policy = json.loads(ds.attrs["policy"])
    meta = checkpoint.read_meta(ckpt)
    assert policy["name"] == "ppo" and policy["sha256"] == meta["params_sha256"]
    assert policy["beta"] == 1.0 and policy["scale"] == 0.5 and policy["trained_beta"] == 0.5
    assert policy["eval_return"] == meta["evaluation"]["return_mean"]
    assert ds.attrs["noise_beta"] == 1.0 and ds.attrs["noise_scale"] == 0.5
    actions = ds.action.values
    assert np.all(np.abs(actions) <= 1.0) and np.std(actions) > 0.01
    # The recorded actions are the policy's, from the recorded episode noise and observations:
    # rebuilt here from the first state of episode 0.
    pol = ppo.PPOPolicy(ckpt, beta=1.0, scale=0.5)
    noise = pol.episode_noise(0, 0, 30, 1)
    from dynsparse import envs

    spec = envs.load("CartpoleBalance")
    from dynsparse import rollout

    states = rollout.make_reset_fn(spec)(rollout.episode_keys(0, np.arange(1)))
    state0 = jax.tree_util.tree_map(lambda x: x[0], states)
    np.testing.assert_allclose(ds.state.values[0, 0], np.concatenate([state0.data.qpos, state0.data.qvel]))
    a0 = pol.act(state0.obs, noise[0], spec.action_low, spec.action_high)
    np.testing.assert_allclose(actions[0, 0], np.asarray(a0), rtol=1e-6)
    # Retrain (here: rewrite) the checkpoint in place: the same command no longer matches the store.
    m, arrays = checkpoint.load(ckpt)
    arrays["normalizer/mean"] = arrays["normalizer/mean"] + 1.0
    checkpoint.save(ckpt, {k: v for k, v in m.items() if k not in ("params_file", "params_sha256")}, arrays)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a run with a different configuration (policy: stored" in err and "sha256" in err
    assert json.loads(xr.open_zarr(out).attrs["policy"])["sha256"] == policy["sha256"]  # untouched
