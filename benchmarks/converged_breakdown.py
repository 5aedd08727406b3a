"""Where the converged definition's control-step Jacobian spends its time, and two rejected variants.

For each environment, jits the converged Jacobian (``autodiff.make_jacobian_fn``, method
``substep``) vmapped over a batch of reset states with random actions, in a fresh process per
variant, on one CPU device, and prints compile seconds (trace, compile and first call) and
Jacobians per second (best of ``--repeat`` calls: single calls vary by up to 30% on this 2-core
machine). Variants:

- ``full``: what dynsparse computes (the **baseline** of the ratios);
- ``primal-only``: the primal solve only, both tangent passes dropped (the Hessian, which only
  the tangents read, is then dropped by XLA too);
- ``q-pass``: primal and the ``q``-direction pass, the velocity/action pass dropped;
- ``va-pass``: primal and the velocity/action pass, the ``q`` pass dropped;
- ``explicit-hessian``: ``solve.hessian`` built as MJX's Newton builds it (``M + J' D_active J``
  plus the elliptic cones' blocks, from the context at ``qacc``) instead of ``jacfwd`` of the
  gradient;
- ``fused``: the ``q`` pass computes the primal step itself (one ``jacfwd`` whose auxiliary
  output is the solve), instead of a separate primal step before it.

The dropped-pass variants give the share of each part (their Jacobians are wrong by design);
the last two compute the same Jacobians (the script prints their largest difference from
``full`` over its largest entry, and the entries zero in one and not the other).

usage: python benchmarks/converged_breakdown.py [--envs CheetahRun] [--batch 64] [--repeat 15]
"""

from __future__ import annotations

import child

CHILD = child.JACOBIAN_HEAD + r'''
if variant == "explicit-hessian":
    from mujoco.mjx._src import support
    from mujoco.mjx._src.types import ConeType

    def hessian(m, d, qacc):
        d = solve._sg_tree(d)
        ctx = solve.mjx_solver.Context.create(m, d.replace(qacc=jax.lax.stop_gradient(qacc)), grad=False)
        j, dd = d._impl.efc_J, d._impl.efc_D
        if m.opt.cone == ConeType.ELLIPTIC:
            cm = jnp.diag(dd * ctx.active)
            keep = d._impl.contact.dim > 1
            for i, (condim, addr) in enumerate(zip(d._impl.contact.dim[keep], d._impl.contact.efc_address[keep])):
                cm = cm.at[addr:addr + condim, addr:addr + condim].add(ctx.h[i, :condim, :condim])
            h = j.T @ cm @ j
        else:
            h = (j.T * dd * ctx.active) @ j
        return support.full_m(m, d) + h

    solve.hessian = hessian

if variant in ("primal-only", "q-pass", "va-pass", "fused"):
    def converged_chain(spec):
        m = definitions.mjx_model(spec, "converged")
        c, control = spec.charts, definitions.control_fn(spec)
        sg = solve._sg_tree

        def sub(d, a):
            dq0 = jnp.zeros((c.nv,), d.qpos.dtype)

            def g(q, v, a_, solution):
                d2 = solve.step_at(m, d.replace(qpos=q, qvel=v, ctrl=control(a_)), solution)
                return autodiff.tangent_state(c, d2.qpos, d2.qvel)

            if variant == "fused":
                def gq(dq):
                    d1 = solve._smooth_stages(m, d.replace(qpos=tangent.retract(c, d.qpos, dq)))
                    p = sg(d1)
                    out, info = solve.run(m, p, True)
                    solution = (out.qacc, out.qfrc_constraint, out._impl.efc_force, solve.hessian(m, p, out.qacc))
                    x, qfrc, force = solve.implicit_tangents(m, d1, *solution)
                    d2 = solve._integrate(m, d1.tree_replace({"qacc": x, "qfrc_constraint": qfrc, "_impl.efc_force": force}))
                    return autodiff.tangent_state(c, d2.qpos, d2.qvel), (sg(d2), info, solution)

                j_q, (d_next, info, solution) = jax.jacfwd(gq, has_aux=True)(dq0)
            else:
                d_next, info, solution = solve.primal_step(m, d, exact_norm=True)
                if variant == "q-pass":
                    j_q = jax.jacfwd(lambda dq: g(tangent.retract(c, d.qpos, dq), d.qvel, a, solution))(dq0)
                else:
                    j_q = jnp.zeros((2 * c.nv, c.nv), d.qpos.dtype) + solution[0].sum()
            if variant in ("primal-only", "q-pass"):
                j_v, j_a = jnp.zeros((2 * c.nv, c.nv), d.qpos.dtype), jnp.zeros((2 * c.nv, a.shape[0]), d.qpos.dtype)
            else:
                j_v, j_a = jax.jacfwd(lambda v, a_: g(d.qpos, v, a_, solution), argnums=(0, 1))(d.qvel, a)
            return d_next, jnp.concatenate([j_q, j_v], axis=1), j_a, info

        return autodiff._chain(spec, sub, spec.state_size, m)

    autodiff._converged_chain = converged_chain

''' + child.JACOBIAN_TIMING + r'''
jac = np.concatenate([np.asarray(out[0]).reshape(batch, -1), np.asarray(out[1]).reshape(batch, -1)], axis=1)
print("RESULT " + json.dumps({"compile": compile_s, "rate": batch / per_call, "jacobians": jac.tolist()}))
'''

VARIANTS = ("full", "primal-only", "q-pass", "va-pass", "explicit-hessian", "fused")
SAME_JACOBIANS = ("explicit-hessian", "fused")


def run(env: str, batch: int, variant: str, repeat: int) -> dict:
    """One variant's compile seconds, rate (best of ``repeat`` calls) and Jacobians, in a fresh process."""
    return child.jacobian_variant(CHILD, env, batch, variant, repeat, {"DYNSPARSE_CPU_DEVICES": "1"})


def main() -> None:
    args = child.jacobian_args(__doc__.splitlines()[0], "CheetahRun", 64)
    import numpy as np

    print("| env | variant | compile + first call s | Jacobians/s | us per Jacobian | vs full (baseline) | max diff / max entry, zero-pattern mismatches vs full |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for env in args.envs.split(","):
        base = run(env, args.batch, "full", args.repeat)
        ref = np.asarray(base["jacobians"])
        for name in VARIANTS:
            r = base if name == "full" else run(env, args.batch, name, args.repeat)
            diff = ""
            if name in SAME_JACOBIANS:
                got = np.asarray(r["jacobians"])
                zeros = int(((got == 0) != (ref == 0)).sum())
                diff = f"{float(np.abs(got - ref).max() / np.abs(ref).max()):.1e}, {zeros} zero mismatches"
            print(f"| {env} | {name} | {r['compile']:.1f} | {r['rate']:.0f} | {1e6 / r['rate']:.0f} | "
                  f"{r['rate'] / base['rate']:.2f}x | {diff} |")


if __name__ == "__main__":
    main()
