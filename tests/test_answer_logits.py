"""Logits only where a loss reads them (objectives/ar.py::ar_loss_at_answers, used by the
train step): loss and gradients equal the full-logits loss, and the compiled understanding
loss holds no (B, T, vocab) array."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs.loader import apply_overrides, load_config
from janusflow.objectives import ar


def _data(seed=0, b=4, t=12, d=8, v=37):
    r = np.random.RandomState(seed)
    hidden = jnp.asarray(r.randn(b, t, d).astype(np.float32))
    w = jnp.asarray(r.randn(d, v).astype(np.float32))
    targets = jnp.asarray(r.randint(0, v, (b, t)), jnp.int32)
    mask = np.zeros((b, t), bool)
    mask[1, -5:] = True                 # exactly K = 5 answers
    mask[2, [3, 6, 7, 11]] = True       # scattered
    mask[3, 0] = True                   # one; row 0 has none
    return hidden, w, targets, jnp.asarray(mask)


def test_answer_logits_equal_full_logits_loss_and_gradients():
    hidden, w, targets, mask = _data()

    def full(h, w):
        return ar.ar_loss(h @ w, targets, mask)

    def at_answers(h, w):
        return ar.ar_loss_at_answers(lambda x: x @ w, h, targets, mask, 5)

    (s_full, n_full), (s_ans, n_ans) = full(hidden, w), at_answers(hidden, w)
    assert float(n_full) == float(n_ans) == 10
    np.testing.assert_allclose(s_ans, s_full, rtol=1e-6)
    g_full = jax.grad(lambda h, w: full(h, w)[0], argnums=(0, 1))(hidden, w)
    g_ans = jax.grad(lambda h, w: at_answers(h, w)[0], argnums=(0, 1))(hidden, w)
    for a, b in zip(g_ans, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # positions that are never read get exactly zero gradient
    assert float(jnp.abs(g_ans[0][0]).max()) == 0.0


def test_answer_positions_overflow_is_nan_not_dropped():
    hidden, w, targets, mask = _data()
    s, _ = ar.ar_loss_at_answers(lambda x: x @ w, hidden, targets, mask, 4)   # row 1 has 5
    assert np.isnan(float(s))
    s_all, _ = ar.ar_loss_at_answers(lambda x: x @ w, hidden, targets, mask, 12)  # K >= T: full
    np.testing.assert_allclose(s_all, ar.ar_loss(hidden @ w, targets, mask)[0], rtol=1e-6)
    idx, valid, over = ar.answer_positions(mask, 5)
    assert idx[2].tolist()[:4] == [3, 6, 7, 11] and valid[2].tolist() == [True] * 4 + [False]
    assert over.tolist() == [False] * 4


def test_understanding_loss_has_no_full_vocab_logits_and_equals_full():
    from janusflow.models.janusflow import JanusFlow
    from janusflow.models.vae import make_vae
    from janusflow.train.step import loss_sums
    from janusflow.train.synthetic import synthetic_batch
    cfg = apply_overrides(load_config("tiny"), ["model.llm.num_layers=1", "model.repa_layer=1",
                                                "model.siglip.num_layers=1", "train.und_batch=3",
                                                "train.gen_batch=0"])
    rngs = nnx.Rngs(0)
    model, vae = JanusFlow(cfg.model, rngs=rngs), make_vae(cfg.model.vae, rngs=rngs)
    batch = {"und": synthetic_batch(cfg)["und"]}
    b, t = batch["und"]["ids"].shape
    v = cfg.model.llm.vocab_size

    def ours(model):
        return loss_sums(model, vae, batch, {}, cfg)["ar"]

    def reference(model):
        u = batch["und"]
        emb = model.understanding_embeds(u["ids"], u["image_mask"], u["pixels"])
        lm = model.language_model
        targets, mask = ar.shift_targets(u["ids"], u["loss_mask"])
        return ar.ar_loss(lm.logits(lm(emb, attention_mask=u["attention_mask"]).hidden), targets, mask)[0]

    np.testing.assert_allclose(ours(model), reference(model), rtol=1e-6)
    g1, g2 = nnx.grad(ours)(model), nnx.grad(reference)(model)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
    hlo = jax.jit(nnx.grad(ours)).lower(model).as_text()
    assert f"{b}x{t}x{v}x" not in hlo
    assert f"{b}x{t - 1 - cfg.model.num_und_tokens}x{v}x" in hlo
    assert f"{b}x{t}x{v}x" in jax.jit(nnx.grad(reference)).lower(model).as_text()
