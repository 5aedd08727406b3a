"""What the converged definition's final Newton step costs (``solve._newton_polish``).

For each environment, jits the converged control-step Jacobian (``autodiff.make_jacobian_fn``)
vmapped over a batch of reset states with random actions, in a fresh process per variant, and
prints compile seconds, Jacobians per second (best of ``--repeat`` calls after the first: single
calls vary by up to 30% on this machine) and the largest
solver residual: ``with`` the final step (what dynsparse computes: ``H^-1 r`` from the Newton
context's own factor), ``jacfwd-hessian`` (the step as first built: ``H`` from ``solve.hessian``
and ``r`` recomputed, then solved) and ``without`` it (the **baseline**: the same solver loop,
the step skipped). One device, this machine's threads.

usage: python benchmarks/final_newton_step.py [--envs CheetahRun,WalkerRun] [--batch 16] [--repeat 15]
"""

from __future__ import annotations

import child

CHILD = child.JACOBIAN_HEAD + r'''
if variant == "without":
    solve._newton_polish = lambda m, d, ctx, norm: ctx
elif variant == "jacfwd-hessian":
    import jax.numpy as jnp
    def polish(m, d, ctx, norm):
        r, _ = solve._gradient(m, d, ctx.qacc)
        new = solve.mjx_solver.Context.create(m, d.replace(qacc=ctx.qacc - jnp.linalg.solve(solve.hessian(m, d, ctx.qacc), r)))
        new = new.replace(solver_niter=ctx.solver_niter, prev_cost=ctx.prev_cost, search=ctx.search)
        better = norm(new.grad) < norm(ctx.grad)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), new, ctx)
    solve._newton_polish = polish
''' + child.JACOBIAN_TIMING + r'''
print("RESULT " + json.dumps({"compile": compile_s, "rate": batch / per_call, "residual": float(np.max(out[3]["solver_residual"]))}))
'''


def run(env: str, batch: int, variant: str, repeat: int) -> dict[str, float]:
    """One variant's compile seconds, rate (best of ``repeat`` calls) and residual, in a fresh process."""
    return child.jacobian_variant(CHILD, env, batch, variant, repeat)


def main() -> None:
    args = child.jacobian_args(__doc__.splitlines()[0], "CheetahRun,WalkerRun", 16)
    print("| env | variant | compile + first call s | Jacobians/s | vs without (baseline) | max solver residual |")
    print("|---|---|---:|---:|---:|---:|")
    for env in args.envs.split(","):
        base = run(env, args.batch, "without", args.repeat)
        rows = [("without (baseline)", base)] + [(v, run(env, args.batch, v, args.repeat)) for v in ("jacfwd-hessian", "with")]
        for name, r in rows:
            print(f"| {env} | {name} | {r['compile']:.1f} | {r['rate']:.0f} | {r['rate'] / base['rate']:.2f}x | {r['residual']:.1e} |")


if __name__ == "__main__":
    main()
