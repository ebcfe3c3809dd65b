"""What does the understanding encoder (REPA's target) know? Ridge probes on its features.

One-object shapes scenes (shapes cycle, colours at random) go through the SigLIP tower; a
ridge-regression probe fit on 3/4 of them names the object's shape and its colour on the
other 1/4. The same probe on a *randomly initialised* tower of the same config is the floor:
patch embeddings pass the raw pixels through, so even a random tower reads shape well above
chance and colour almost perfectly (measured on the 32 px shapes: shape 0.41, colour 0.98,
chance 1/6 and 1/10). A trained encoder knows a property only where it beats that floor: the
default run's caption-trained SigLIP reads shape 0.43, at the floor, while the same tower
trained on the shape label reads 0.82 (README "The default run"). Colour sits at the ceiling
for any tower, so its probe only flags an encoder that lost it (0.87 for that shape-trained one).

Features: the mean and the max over patches of the tower's output, standardised.
"""

from __future__ import annotations

import numpy as np

PROBE_L2 = 10.0


def probe_scenes(n: int, size: int, seed: int = 0):
    """``n`` one-object scenes, the shape gap's set (shapes cycle, colours at random): uint8
    images (n, size, size, 3), shape and colour indices."""
    from janusflow.shapes import world as shapes
    from janusflow.shapes.conditioning import shape_swap_prompts
    if n < 8:
        raise ValueError(f"encoder probe: need at least 8 scenes, got {n}")
    rng = np.random.default_rng([seed, 11])
    images, shape_ids, colour_ids = [], [], []
    for meta, _ in shape_swap_prompts(n, seed):
        obj = meta["include"][0]
        images.append(shapes.render(shapes.scene_from_metadata(meta, rng, size), size, rng))
        shape_ids.append(shapes.SHAPES.index(obj["class"]))
        colour_ids.append(shapes.COLORS.index(obj["color"]))
    return np.stack(images), np.asarray(shape_ids), np.asarray(colour_ids)


def ridge_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *, l2: float = PROBE_L2,
                train_frac: float = 0.75) -> float:
    """Held-out accuracy of a one-vs-all ridge regression (bias included) from ``features``
    (N, F) to ``labels`` (N,) in [0, num_classes). The first ``train_frac`` rows fit it."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"ridge_probe: features must be (N, F) and labels (N,), got {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"ridge_probe: labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    n_tr = int(round(train_frac * len(x)))
    if not 0 < n_tr < len(x):
        raise ValueError(f"ridge_probe: {len(x)} rows leave no train or no test split at {train_frac}")
    mu, sd = x[:n_tr].mean(0), x[:n_tr].std(0) + 1e-6   # statistics of the train split only
    a = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
    onehot = np.eye(num_classes)[y]
    w = np.linalg.solve(a[:n_tr].T @ a[:n_tr] + l2 * np.eye(a.shape[1]), a[:n_tr].T @ onehot[:n_tr])
    return float(np.mean(np.argmax(a[n_tr:] @ w, 1) == y[n_tr:]))


def tower_features(tower, siglip_cfg, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, 2W): mean and max over patches of ``tower`` on the [0, 255] images."""
    import jax.numpy as jnp
    from flax import nnx

    from janusflow.models.siglip import normalize
    fwd = nnx.jit(lambda m, x: m(x))
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = normalize(jnp.asarray(images_u8[i:i + batch_size], jnp.float32) / 255.0, siglip_cfg)
        f = np.asarray(fwd(tower, x), np.float64)            # (b, patches, W)
        out.append(np.concatenate([f.mean(1), f.max(1)], -1))
    return np.concatenate(out)


def encoder_probe(tower, siglip_cfg, *, n: int = 1200, seed: int = 0) -> dict:
    """Shape and colour probe accuracies of ``tower`` and of a random tower of its config."""
    from flax import nnx

    from janusflow.shapes import world as shapes
    from janusflow.models.siglip import SiglipVisionTower
    images, shape_ids, colour_ids = probe_scenes(n, siglip_cfg.image_size, seed)
    random_tower = SiglipVisionTower(siglip_cfg, rngs=nnx.Rngs(seed + 1))
    out = {"n": n, "chance_shape": 1 / len(shapes.SHAPES), "chance_colour": 1 / len(shapes.COLORS)}
    for name, t in (("", tower), ("random_", random_tower)):
        f = tower_features(t, siglip_cfg, images)
        out[name + "shape"] = ridge_probe(f, shape_ids, len(shapes.SHAPES))
        out[name + "colour"] = ridge_probe(f, colour_ids, len(shapes.COLORS))
    return out


def summary(res: dict) -> str:
    return (f"shape {res['shape']:.2f} (random tower {res['random_shape']:.2f}, chance {res['chance_shape']:.2f}), "
            f"colour {res['colour']:.2f} (random tower {res['random_colour']:.2f}, chance {res['chance_colour']:.2f}), "
            f"{res['n']} one-object scenes")
