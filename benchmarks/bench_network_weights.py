"""Can the class head learn under given loss weights? Memorisation check on one fixed batch.

    python benchmarks/bench_network_weights.py [--config configs/train-default.toml] [--steps 200]
        [--weights "0,1,0,0" "1,0.3,1,0.3" "1,1,1,0.3" "1,3,1,0.3"]

Draws one fixed batch (`--batches` x 48 patterns of the config's training generator), then for each weight set
(size, class, axes, orientation) trains a fresh network (the config's architecture, seed 0) on that batch alone
with Adam (`--lr`) and prints the class term every 25 steps. A class term that stays near ln(n_classes) on data
seen `--steps` times means the class head cannot learn under those weights (docs/network.md, section 6).
"""

import argparse
import os
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "configs", "train-default.toml"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batches", type=int, default=2, help="fixed data: this many batches of 48")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weights", nargs="+", default=["0,1,0,0", "1,0.3,1,0.3", "1,1,1,0.3", "1,3,1,0.3"])
    a = ap.parse_args(argv)
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fitting._network import network_loss
    from fitting._train import DataStream, build_model, check_config

    with open(a.config, "rb") as f:
        cfg = check_config(tomllib.load(f))
    stream = DataStream(cfg, 48)
    xs, ts = zip(*(stream.batch(s) for s in range(a.batches)), strict=True)
    x = jnp.asarray(np.concatenate([np.asarray(v) for v in xs]))
    tg = {k: jnp.asarray(np.concatenate([t[k] for t in ts])) for k in ts[0]}
    print(f"{len(x)} fixed patterns, labels {np.bincount(np.asarray(tg['label'])).tolist()}, {a.steps} steps")
    opt = optax.adam(a.lr)
    for spec in a.weights:
        w = dict(
            zip(("size", "class", "axes", "orientation"), (float(v) for v in spec.split(",")), strict=True)
        )

        def loss(m, w=w):
            out = jax.vmap(m)(x)
            tot, parts = jax.vmap(lambda o, t: network_loss(o, t, w))(out, tg)
            return jnp.mean(tot), jnp.mean(parts["class"])

        @eqx.filter_jit
        def step(m, s, loss=loss):
            (_, ce), g = eqx.filter_value_and_grad(loss, has_aux=True)(m)
            u, s = opt.update(g, s, eqx.filter(m, eqx.is_inexact_array))
            return eqx.apply_updates(m, u), s, ce

        model = build_model(cfg, jax.random.PRNGKey(0))
        state = opt.init(eqx.filter(model, eqx.is_inexact_array))
        curve = []
        for i in range(a.steps):
            model, state, ce = step(model, state)
            if i % 25 == 0 or i == a.steps - 1:
                curve.append(f"{float(ce):.3f}")
        print(f"weights {spec:>14}: class term " + " ".join(curve), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
