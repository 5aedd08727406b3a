"""The collection the resume tests interrupt: 3 episodes in batches of 2, 4 chunks of 10 steps."""

from dynsparse import collect

CONFIG = collect.CollectConfig(
    env="CartpoleBalance", episodes=3, steps=40, policy={"name": "colored", "beta": 1.0, "scale": 0.8},
    seed=7, batch_size=2, chunk_steps=10, check_every=7,
)
CLI_ARGS = [
    "collect", "CartpoleBalance", "--episodes", "3", "--steps", "40", "--policy", "colored", "--beta", "1.0",
    "--noise-scale", "0.8", "--seed", "7", "--batch-size", "2", "--chunk-steps", "10", "--check-every", "7",
]
