"""Slow PPO tests: a tiny CPU training run interrupted and resumed (vs brax's own trainer), the colored-noise training wrapper, collection with PPO."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from dynsparse import cli, errors
from dynsparse.policies import checkpoint, ppo, ppo_train

POLICIES = Path(__file__).resolve().parents[1] / "policies"
TINY = (("num_envs", 8), ("batch_size", 8), ("num_minibatches", 4), ("unroll_length", 10), ("num_evals", 4),
        ("num_eval_envs", 4), ("episode_length", 100), ("num_updates_per_batch", 2), ("num_resets_per_eval", 2))
TINY_CONFIG = ppo_train.TrainConfig(env="CartpoleBalance", timesteps=6000, noise_beta=1.0, seed=3, overrides=TINY,
                                    policy_hidden=(8, 8), value_hidden=(16, 16))


def _brax_reference(config: ppo_train.TrainConfig) -> tuple[dict[str, np.ndarray], list[tuple[int, float]]]:
    """brax's own ``ppo.train`` on the same environment, networks, wrapper, seed and hyper-parameters."""
    from brax.training.agents.ppo import train as brax_ppo
    from mujoco_playground import registry

    from dynsparse.policies import ppo_networks

    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        rl = config.rl_config()
        env = registry.load(config.env, config_overrides={"impl": "jax"})
        eval_env = registry.load(config.env, config_overrides={"impl": "jax"})
        factory = ppo_networks.make_network_factory(env.action_size, config.policy_hidden, config.value_hidden, "swish")
        wrap = ppo_train.make_colored_noise_wrapper(env.observation_size, env.action_size, config.noise_beta, rl["episode_length"])
        curve: list[tuple[int, float]] = []
        _, params, _ = brax_ppo.train(environment=env, eval_env=eval_env, network_factory=factory, seed=config.seed,
                                      wrap_env_fn=wrap, progress_fn=lambda s, m: curve.append((s, float(m["eval/episode_reward"]))),
                                      **rl)
        return ppo_train.params_arrays(jax.device_get(params)), curve
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.slow
def test_interrupted_training_resumes_to_brax_own_result_bit_for_bit(tmp_path, cartpole, capsys):
    """brax's ppo.train uninterrupted == dynsparse's loop stopped after its first iteration and resumed
    from the saved state in a fresh trainer (CLI ``--resume``): every parameter, the normaliser and the
    evaluation curve equal bit for bit (CPU)."""
    ref_params, ref_curve = _brax_reference(TINY_CONFIG)
    assert len(ref_curve) == 4 and ref_curve[0][0] == 0

    out = tmp_path / "p"

    def interrupt(point: ppo_train.EvalPoint, total: int) -> None:
        if point.steps > 0:
            raise KeyboardInterrupt  # as Ctrl-C (or a lease's SIGINT) right after the first iteration's save

    with pytest.raises(KeyboardInterrupt):
        ppo_train.train(TINY_CONFIG, out, on_eval=interrupt)
    assert jax.config.read("jax_enable_x64")  # restored after training in float32
    meta = checkpoint.read_meta(out)
    assert not meta["complete"] and len(meta["curve"]) == 2 and meta["training"]["steps_done"] == ref_curve[1][0]
    assert (out / ppo_train.STATE_FILE).stat().st_size < 16 * 2**20  # what a device call can carry back

    # A resume with another option is refused in one line, before any work; so is a fresh run into the folder.
    with pytest.raises(errors.UserError, match="it was trained with seed=3, not 4"):
        ppo_train.train(dataclasses.replace(TINY_CONFIG, seed=4), out, resume=True)
    with pytest.raises(errors.UserError, match="already exists and is not empty.*--resume"):
        ppo_train.train(TINY_CONFIG, out)
    capsys.readouterr()
    assert cli.main(["train-policy", "CartpoleBalance", "--out", str(out), "--resume"]) == 0  # options from the saved run
    assert "6000" in capsys.readouterr().out

    meta = checkpoint.read_meta(out)
    assert meta["complete"] and meta["env"] == "CartpoleBalance" and meta["noise"]["beta"] == 1.0
    assert [(p["steps"], p["return_mean"]) for p in meta["curve"]] == ref_curve
    assert meta["training"]["steps_done"] >= 6000 and meta["training"]["budget_timesteps"] == 6000
    assert meta["training"]["hyperparameters"]["discounting"] == 0.995  # published value kept
    assert [s["from_steps"] for s in meta["training"]["segments"]] == [0, ref_curve[1][0]]
    _, mine = checkpoint.load(out)
    assert sorted(mine) == sorted(ref_params) and len(mine) == 4 + 2 * 3 * 2
    for name, ref in ref_params.items():
        assert mine[name].dtype == ref.dtype and mine[name].shape == ref.shape, name
        np.testing.assert_array_equal(mine[name], ref, err_msg=name)
    pol = ppo.PPOPolicy(out)
    pol.check_env(cartpole)
    with pytest.raises(errors.UserError, match="cannot resume .* no train_state.npz|cannot resume"):
        ppo_train.train(TINY_CONFIG, tmp_path / "empty", resume=True)


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


def test_resume_refusals_are_one_line_and_come_before_any_work(tmp_path, capsys):
    """Fast: nothing is compiled; each refusal names the folder and what is wrong."""
    with pytest.raises(errors.UserError, match="cannot resume .*: it holds no training state"):
        ppo_train.train(TINY_CONFIG, tmp_path / "missing", resume=True)
    exported = tmp_path / "exported"
    shutil.copytree(POLICIES / "CartpoleBalance", exported)  # an exported inference policy: no optimizer state
    with pytest.raises(errors.UserError, match="a policy without its training state"):
        ppo_train.train(TINY_CONFIG, exported, resume=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ppo_train.STATE_FILE).write_bytes(b"not an npz")
    with pytest.raises(errors.UserError, match="cannot read the training state"):
        ppo_train.train(TINY_CONFIG, bad, resume=True)
    np.savez(bad / ppo_train.STATE_FILE, x=np.zeros(2))
    with pytest.raises(errors.UserError, match="is not a dynsparse PPO training state"):
        ppo_train.train(TINY_CONFIG, bad, resume=True)
    assert cli.main(["train-policy", "CartpoleBalance", "--out", str(exported), "--resume"]) == 2
    assert "no train_state.npz" in capsys.readouterr().err
    # Only keywords the resumable loop honours may be set.
    for key in ("use_pmap_on_reset", "log_training_metrics", "max_devices_per_host"):
        with pytest.raises(errors.UserError, match=f"cannot set '{key}'; allowed: .*num_resets_per_eval"):
            dataclasses.replace(TINY_CONFIG, overrides=((key, "1"),)).validated()
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(errors.UserError, match="exploration-scale .* is not allowed; allowed: a finite number > 0"):
            dataclasses.replace(TINY_CONFIG, exploration_scale=bad).validated()
    assert "max_grad_norm" in ppo_train.overridable_keys() and "num_resets_per_eval" in ppo_train.overridable_keys()


class _CountingRun:
    """A stand-in for ``ppo_loop.PPORun``: records the loop's calls (no JAX)."""

    options = {"num_evals": 4, "run_evals": True}
    num_evals_after_init = 3
    num_timesteps = 30

    def __init__(self) -> None:
        self.calls: list[str] = []

    def evaluate(self, state, training_metrics):
        self.calls.append(f"eval@{state.iterations_done}")
        return dataclasses.replace(state, eval_key=state.eval_key + 1), {}

    def iterate(self, state):
        self.calls.append(f"iterate@{state.iterations_done}")
        return dataclasses.replace(state, iterations_done=state.iterations_done + 1, initial_evaluated=True), {}

    def env_steps(self, state):
        return 10 * state.iterations_done


def test_loop_order_initial_evaluation_once_and_stops_where_asked():
    from dynsparse.policies import ppo_loop

    fake, saved = _CountingRun(), []
    state = ppo_loop.LoopState(None, 0, 0, 0, 0)
    allowed = iter([True, False])
    state = ppo_loop.run(fake, state, lambda s, m: None, lambda s, m: saved.append(s), lambda: next(allowed))
    assert fake.calls == ["eval@0", "iterate@0", "eval@1"] and state.iterations_done == 1 and state.eval_key == 2
    assert [s.iterations_done for s in saved] == [0, 1]
    # Resuming from the saved state neither repeats the initial evaluation nor skips an iteration.
    fake.calls.clear()
    final = ppo_loop.run(fake, saved[-1], lambda s, m: None, lambda s, m: None)
    assert fake.calls == ["iterate@1", "eval@2", "iterate@2", "eval@3"] and final.iterations_done == 3
    # A run stopped after its initial evaluation resumes with the first iteration.
    fake.calls.clear()
    ppo_loop.run(fake, saved[0], lambda s, m: None, lambda s, m: None)
    assert fake.calls[:2] == ["iterate@0", "eval@1"]
    # The lease deadline: an iteration is started only if 1.2 x the last one ends before it.
    assert ppo_train.Budget().allows(1e9)
    assert ppo_train.Budget(stop_at=100.0).allows(10.0, now=87.0) and not ppo_train.Budget(stop_at=100.0).allows(10.0, now=89.0)
