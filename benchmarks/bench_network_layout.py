"""Which network input layout generalises? Train each layout on one fixed pool of training patterns, score held out.

    python benchmarks/bench_network_layout.py [--config configs/train-default.toml] [--pool 2880] [--steps 1500]
        [--layouts cartesian polar polar-all polar-even] [--weights 1,1,1,0.3] [--json FILE]

Draws `--pool` patterns from the config's training generator (80 % at its seed + 1000, 20 % held out at
+ 2000, so not the patterns `diffscat train` would see) and trains a fresh network of each layout on the 80 %
(AdamW, lr `--lr`, batch 32, `--steps` steps, the loss weights `--weights` = size, class, axes, orientation).
Prints the held-out loss terms and class accuracy every 250 steps. Layouts: "cartesian" (the first network),
"polar" (polar input, mean/max pooling over azimuth only: `[network] harmonics = []`), "polar-all" (azimuthal
orders 1..8), "polar-even" (orders 2, 4, 6, 8: the default); a "-spec" suffix adds the radial-spectrum size
feature (`[network] radial_spectrum = 4`, e.g. "polar-even-spec"). Every pool pattern has the training generator's
beam-centre offset; `--centred` sets it to 0 in the HELD-OUT part (the offset's odd-order signature is then
absent: a layout that learnt from it loses accuracy there).
A held-out class accuracy at chance with a falling training loss means the layout memorises instead of
learning (docs/network.md, section 6).
"""

import argparse
import json
import os
import sys
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _orders(tag: str) -> list[int]:
    return {"": [], "-all": list(range(1, 9)), "-even": [2, 4, 6, 8]}[tag]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "configs", "train-default.toml"))
    ap.add_argument("--pool", type=int, default=2880, help="patterns drawn (80 %% train, 20 %% held out)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--layouts", nargs="+", default=["cartesian", "polar", "polar-all", "polar-even"])
    ap.add_argument("--weights", default="1,1,1,0.3")
    ap.add_argument("--json", default=None)
    ap.add_argument("--centred", action="store_true", help="held-out patterns without a beam-centre offset")
    a = ap.parse_args(argv)
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fitting._network import build_model, network_loss
    from fitting._train import DataStream, check_config

    with open(a.config, "rb") as f:
        base = tomllib.load(f)
    cfg = check_config(base)
    w = dict(
        zip(("size", "class", "axes", "orientation"), (float(v) for v in a.weights.split(",")), strict=True)
    )
    t0 = time.perf_counter()

    def draw(c, n, seed_offset):
        stream = DataStream(c, 48, seed_offset=seed_offset)
        xs, tgs = [], []
        for s in range((n + 47) // 48):
            xb, tb = stream.batch(s)
            xs.append(np.asarray(xb))
            tgs.append(tb)
        return np.concatenate(xs)[:n], {k: np.concatenate([t[k] for t in tgs])[:n] for k in tgs[0]}

    ntr = int(0.8 * a.pool)
    held_cfg = cfg
    if a.centred:
        held_cfg = check_config({**cfg, "data": {**cfg["data"], "center_shift_px": 0}})
    x_tr, t_tr = draw(cfg, ntr, 1000)
    x_te, t_te = draw(held_cfg, a.pool - ntr, 2000)
    x = jnp.asarray(np.concatenate([x_tr, x_te]))
    tg = {k: jnp.asarray(np.concatenate([t_tr[k], t_te[k]])) for k in t_tr}
    print(
        f"pool: {len(x)} patterns ({ntr} train), classes {cfg['classes']}, {time.perf_counter() - t0:.0f} s"
    )
    results = {}
    for layout in a.layouts:
        net = dict(cfg["network"])
        if layout == "cartesian":
            net["input"] = "cartesian"
        elif layout.startswith("polar"):
            tag = layout[5:]
            spec = tag.endswith("-spec")  # + the radial spectrum (fringe spacing) feature
            net.update(
                input="polar", harmonics=_orders(tag.removesuffix("-spec")), radial_spectrum=4 if spec else 0
            )
        else:
            raise SystemExit(f"unknown layout {layout!r}")
        model = build_model({**cfg, "network": net}, jax.random.PRNGKey(0))
        opt = optax.adamw(a.lr, weight_decay=1e-4)
        state = opt.init(eqx.filter(model, eqx.is_inexact_array))

        def loss(m, xb, tb):
            out = jax.vmap(m)(xb)
            tot, parts = jax.vmap(lambda o, t: network_loss(o, t, w))(out, tb)
            acc = jnp.mean(jnp.argmax(out["logits"], -1) == tb["label"])
            return jnp.mean(tot), ({k: jnp.mean(v) for k, v in parts.items()}, acc)

        @eqx.filter_jit
        def step(m, s, xb, tb, loss=loss, opt=opt):
            (_, aux), g = eqx.filter_value_and_grad(loss, has_aux=True)(m, xb, tb)
            u, s = opt.update(g, s, eqx.filter(m, eqx.is_inexact_array))
            return eqx.apply_updates(m, u), s, aux

        held = eqx.filter_jit(lambda m, loss=loss: loss(m, x[ntr:], {k: v[ntr:] for k, v in tg.items()})[1])
        rng = np.random.default_rng(0)
        curve = []
        t1 = time.perf_counter()
        for i in range(a.steps):
            idx = rng.integers(0, ntr, 32)
            model, state, (tr_parts, tr_acc) = step(model, state, x[idx], {k: v[idx] for k, v in tg.items()})
            if (i + 1) % 250 == 0 or i + 1 == a.steps:
                parts, acc = held(model)
                row = {"step": i + 1, "train_class": float(tr_parts["class"]), "accuracy": float(acc)}
                row |= {k: float(v) for k, v in parts.items()}
                curve.append(row)
                print(
                    f"{layout:>10} step {i + 1:5d}: held-out class {row['class']:.3f} acc {row['accuracy']:.3f} "
                    f"size {row['size']:.4f} axes {row['axes']:.4f} orient {row['orientation']:.3f} "
                    f"(train class {row['train_class']:.3f}; {time.perf_counter() - t1:.0f} s)",
                    flush=True,
                )
        n_par = sum(int(v.size) for v in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
        results[layout] = {"parameters": n_par, "curve": curve}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": a.config, "pool": len(x), "weights": w, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
