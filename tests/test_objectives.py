"""Objectives: AR cross entropy, rectified flow (t=0 noise, t=1 data), REPA, CFG dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janusflow.models.janusflow import TIME_SCALE
from janusflow.objectives import ar, cfg_dropout, flow, repa


# ------------------------------------------------------------------------------------------- AR
def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        m = row.max()
        out[idx] = row - m - np.log(np.exp(row - m).sum())
    return out


def _ar_fixture():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
    mask = np.array([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]], bool)
    return logits, targets, mask


def test_ar_loss_matches_numpy():
    logits, targets, mask = _ar_fixture()
    lsm = _np_log_softmax(logits)
    expect = -sum(lsm[b, i, targets[b, i]] for b in range(2) for i in range(5) if mask[b, i])
    s, c = jax.jit(ar.ar_loss)(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert s.dtype == jnp.float32 and c.dtype == jnp.float32
    assert float(c) == mask.sum() == 5
    np.testing.assert_allclose(float(s), expect, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(float(ar.safe_mean(s, c)), expect / 5, rtol=1e-6)


def test_ar_loss_bf16_logits_computed_in_fp32():
    logits, targets, mask = _ar_fixture()
    lb = jnp.asarray(logits * 40).astype(jnp.bfloat16)          # large logits: bf16 lse would be off
    s, _ = ar.ar_loss(lb, jnp.asarray(targets), jnp.asarray(mask))
    lsm = _np_log_softmax(np.asarray(lb.astype(jnp.float32)))
    expect = -sum(lsm[b, i, targets[b, i]] for b in range(2) for i in range(5) if mask[b, i])
    assert s.dtype == jnp.float32
    np.testing.assert_allclose(float(s), expect, rtol=1e-6)


def test_ar_masked_positions_do_not_contribute():
    logits, targets, mask = _ar_fixture()
    s0, _ = ar.ar_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    l2, t2 = logits.copy(), targets.copy()
    l2[~mask] = np.nan                       # garbage logits at masked positions
    t2[~mask] = -100                         # ignore-index style targets at masked positions
    s1, _ = ar.ar_loss(jnp.asarray(l2), jnp.asarray(t2), jnp.asarray(mask))
    assert float(s1) == float(s0)
    # ...whereas changing a counted position does change the loss.
    l3 = logits.copy()
    l3[0, 1, targets[0, 1]] += 1.0
    s2, _ = ar.ar_loss(jnp.asarray(l3), jnp.asarray(targets), jnp.asarray(mask))
    assert float(s2) < float(s0) - 1e-3


def test_ar_gradient_is_softmax_minus_onehot_on_masked_positions():
    logits, targets, mask = _ar_fixture()
    g = jax.grad(lambda l: ar.ar_loss(l, jnp.asarray(targets), jnp.asarray(mask))[0])(jnp.asarray(logits))
    p = np.exp(_np_log_softmax(logits))
    onehot = np.eye(7)[targets]
    expect = (p - onehot) * mask[..., None]
    np.testing.assert_allclose(np.asarray(g), expect, atol=1e-6)


def test_shift_targets_layout():
    ids = jnp.array([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]], jnp.int32)
    lm = jnp.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], bool)
    t, m = ar.shift_targets(ids, lm)
    np.testing.assert_array_equal(np.asarray(t), [[11, 12, 13, 14, 0], [21, 22, 23, 24, 0]])
    np.testing.assert_array_equal(np.asarray(m), [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    assert m.dtype == jnp.bool_ and t.shape == ids.shape


def test_ar_shape_errors():
    logits, targets, mask = _ar_fixture()
    with pytest.raises(ValueError, match="targets shape"):
        ar.ar_loss(jnp.asarray(logits), jnp.asarray(targets[:, :4]), jnp.asarray(mask))
    with pytest.raises(ValueError, match="logits must be"):
        ar.ar_loss(jnp.asarray(logits[0]), jnp.asarray(targets), jnp.asarray(mask))
    with pytest.raises(ValueError, match="loss_mask shape"):
        ar.shift_targets(jnp.asarray(targets), jnp.asarray(mask[:, :3]))


# ----------------------------------------------------------------------------------------- flow
def test_rf_loss_hand_computed():
    # Two examples of shape (2, 1, 2): target x - z0, error v - (x - z0), mean of squares.
    x = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]], np.float32)
    z0 = np.array([[[[0.0, 1.0]], [[1.0, 1.0]]], [[[1.0, -1.0]], [[2.0, 0.5]]]], np.float32)
    v = np.array([[[[1.0, 1.0]], [[2.0, 3.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]], np.float32)
    # example 0: target (1,1,2,3) == v -> 0; example 1: target (-1,1,-2,-0.5), v = 0 -> (1+1+4+0.25)/4
    expect = np.array([0.0, 6.25 / 4])
    got = flow.rf_loss(jnp.asarray(v), jnp.asarray(x), jnp.asarray(z0))
    assert got.shape == (2,) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-6)
    w = jnp.array([2.0, 0.5])
    np.testing.assert_allclose(np.asarray(flow.rf_loss(jnp.asarray(v), jnp.asarray(x), jnp.asarray(z0), w)),
                               expect * [2.0, 0.5], rtol=1e-6)


def test_rf_loss_matches_numpy_random_and_terms_mask():
    rng = np.random.default_rng(1)
    x, z0, v = (rng.normal(size=(3, 4, 4, 2)).astype(np.float32) for _ in range(3))
    expect = np.array([np.mean((v[b].astype(np.float64) - x[b] + z0[b]) ** 2) for b in range(3)])
    got = flow.rf_loss(jnp.asarray(v).astype(jnp.bfloat16).astype(jnp.float32), jnp.asarray(x), jnp.asarray(z0))
    np.testing.assert_allclose(np.asarray(got), expect, rtol=2e-2)   # bf16-rounded v
    got = flow.rf_loss(jnp.asarray(v), jnp.asarray(x), jnp.asarray(z0))
    np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-5)
    v_bad = v.copy()
    v_bad[1] = np.nan
    s, c = flow.rf_loss_terms(jnp.asarray(v_bad), jnp.asarray(x), jnp.asarray(z0),
                              mask=jnp.array([True, False, True]))
    assert float(c) == 2.0
    np.testing.assert_allclose(float(s), expect[0] + expect[2], rtol=1e-5)
    s, c = flow.rf_loss_terms(jnp.asarray(v), jnp.asarray(x), jnp.asarray(z0))
    assert float(c) == 3.0
    np.testing.assert_allclose(float(s), expect.sum(), rtol=1e-5)


def test_interpolant_endpoints_and_target():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 2, 2, 4)), jnp.float32)
    z0 = jnp.asarray(rng.normal(size=(3, 2, 2, 4)), jnp.float32)
    zt = flow.interpolate(x, z0, jnp.array([0.0, 1.0, 0.25]))
    np.testing.assert_array_equal(np.asarray(zt[0]), np.asarray(z0[0]))      # t=0: noise
    np.testing.assert_array_equal(np.asarray(zt[1]), np.asarray(x[1]))       # t=1: data
    np.testing.assert_allclose(np.asarray(zt[2]), 0.25 * np.asarray(x[2]) + 0.75 * np.asarray(z0[2]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(flow.target_velocity(x, z0)), np.asarray(x) - np.asarray(z0))
    # The regression target is the time derivative of the path.
    t = jnp.array([0.3, 0.6, 0.9])
    _, dz = jax.jvp(lambda tt: flow.interpolate(x, z0, tt), (t,), (jnp.ones(3),))
    np.testing.assert_allclose(np.asarray(dz), np.asarray(flow.target_velocity(x, z0)), atol=1e-5)
    with pytest.raises(ValueError, match="t must have shape"):
        flow.interpolate(x, z0, jnp.array(0.5))
    with pytest.raises(ValueError, match="noise shape"):
        flow.interpolate(x, z0[:2], jnp.ones(3))


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.8)])
def test_logit_normal_sampling_statistics(mean, std):
    t = flow.sample_t(jax.random.key(0), 200_000, "logit_normal", mean, std)
    assert t.shape == (200_000,) and t.dtype == jnp.float32
    t = np.asarray(t, np.float64)
    assert (t > 0).all() and (t < 1).all()
    lg = np.log(t) - np.log1p(-t)
    assert abs(lg.mean() - mean) < 0.01
    assert abs(lg.std() - std) < 0.01


def test_uniform_sampling_and_bad_kind():
    t = np.asarray(flow.sample_t(jax.random.key(1), 200_000, "uniform"), np.float64)
    assert (t > 0).all() and (t < 1).all()
    assert abs(t.mean() - 0.5) < 0.005
    assert abs(t.var() - 1 / 12) < 0.002
    with pytest.raises(ValueError, match="unknown time sampler"):
        flow.sample_t(jax.random.key(1), 4, "cosine")


def test_time_grid_and_model_time():
    ts, dt = flow.time_grid(30)
    np.testing.assert_allclose(np.asarray(ts), np.arange(30) / 30, atol=1e-7)
    assert dt == pytest.approx(1 / 30)
    np.testing.assert_allclose(np.asarray(flow.model_time(ts)), np.arange(30) / 30 * 1000.0, rtol=1e-6)
    assert TIME_SCALE == 1000.0
    with pytest.raises(ValueError):
        flow.time_grid(0)
    with pytest.raises(ValueError):
        flow.time_grid(2.5)


def _integrate(step, z, num_steps):
    ts, dt = flow.time_grid(num_steps)
    t = ts[0]
    for k in range(num_steps):
        z, t = step(z, ts[k], dt)
    return z, t


def test_euler_integrates_straight_path_exactly():
    rng = np.random.default_rng(3)
    z0 = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    v = flow.target_velocity(x, z0)
    z, t = _integrate(lambda z, t, dt: flow.euler_step(z, v, t, dt), z0, 30)
    assert abs(float(t) - 1.0) < 1e-6
    assert float(jnp.max(jnp.abs(z - x))) < 1e-5


def _field(z, t):                        # dz/dt = (a + b t) z  ->  z(1) = z(0) exp(a + b/2)
    return (0.7 + 1.2 * t) * z


def test_euler_first_order_heun_second_order():
    z0 = jnp.array([1.0, -0.5, 2.0], jnp.float32)
    exact = np.asarray(z0) * np.exp(0.7 + 0.6)
    euler = lambda z, t, dt: flow.euler_step(z, _field(z, t), t, dt)   # noqa: E731
    heun = lambda z, t, dt: flow.heun_step(z, t, dt, _field)           # noqa: E731
    e_err = [np.abs(np.asarray(_integrate(euler, z0, n)[0]) - exact).max() for n in (16, 32, 64)]
    h_err = [np.abs(np.asarray(_integrate(heun, z0, n)[0]) - exact).max() for n in (16, 32, 64)]
    scale = np.abs(exact).max()
    assert e_err[-1] < 0.03 * scale and h_err[-1] < 2e-4 * scale, (e_err, h_err)
    for a, b in zip(e_err, e_err[1:]):
        assert 1.8 < a / b < 2.2, e_err
    for a, b in zip(h_err, h_err[1:]):
        assert 3.5 < a / b < 4.5, h_err


def test_steps_are_jittable_with_batched_t():
    z = jnp.ones((2, 3))
    t = jnp.zeros((2,))
    z1, t1 = jax.jit(lambda z, t: flow.heun_step(z, t, 0.5, lambda z, t: t[:, None] + z))(z, t)
    # v1 = 1 (t=0, z=1); z_e = 1.5; v2 = 0.5 + 1.5 = 2; z1 = 1 + 0.25 * 3
    np.testing.assert_allclose(np.asarray(z1), 1.75)
    np.testing.assert_allclose(np.asarray(t1), 0.5)
    with pytest.raises(ValueError, match="velocity shape"):
        flow.euler_step(z, jnp.ones((2, 4)), t, 0.1)


# ----------------------------------------------------------------------------------------- REPA
def _repa_fixture():
    rng = np.random.default_rng(4)
    pred = jnp.asarray(rng.normal(size=(3, 6, 8)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(3, 6, 8)), jnp.float32)
    return pred, target


def test_repa_matches_numpy():
    pred, target = _repa_fixture()
    p, q = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    cos = (p * q).sum(-1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(q, axis=-1)
    per = -cos.mean(-1)
    s, c = jax.jit(repa.repa_loss)(pred, target)
    assert float(c) == 3.0
    np.testing.assert_allclose(float(s), per.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(repa.repa_per_example(pred, target)), per, rtol=1e-5)


def test_repa_no_gradient_to_target():
    pred, target = _repa_fixture()
    g_t = jax.grad(lambda tg: repa.repa_loss(pred, tg)[0])(target)
    assert np.all(np.asarray(g_t) == 0.0)
    g_p = jax.grad(lambda p: repa.repa_loss(p, target)[0])(pred)
    assert float(jnp.max(jnp.abs(g_p))) > 1e-3


def test_repa_scale_invariance_and_extremes():
    pred, target = _repa_fixture()
    s0, _ = repa.repa_loss(pred, target)
    s1, _ = repa.repa_loss(pred * 0.2, target * 37.0)
    np.testing.assert_allclose(float(s1), float(s0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(repa.repa_per_example(pred, 3.0 * pred)), -1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(repa.repa_per_example(pred, -pred)), 1.0, atol=1e-6)
    s, c = repa.repa_loss(pred, pred)
    np.testing.assert_allclose(float(s / c), -1.0, atol=1e-6)


def test_repa_mask_and_zero_vectors():
    pred, target = _repa_fixture()
    per = np.asarray(repa.repa_per_example(pred, target))
    bad = pred.at[1].set(jnp.nan)
    s, c = repa.repa_loss(bad, target, mask=jnp.array([True, False, True]))
    assert float(c) == 2.0
    np.testing.assert_allclose(float(s), per[0] + per[2], rtol=1e-5)
    s, c = repa.repa_loss(pred, target, mask=jnp.array([0.5, 0.0, 1.0]))
    np.testing.assert_allclose([float(s), float(c)], [0.5 * per[0] + per[2], 1.5], rtol=1e-5)
    # An all-zero prediction (e.g. a zero-initialised projector) gives a finite loss and gradient.
    zero = jnp.zeros_like(pred)
    s, g = jax.value_and_grad(lambda p: repa.repa_loss(p, target)[0])(zero)
    assert float(s) == 0.0 and np.isfinite(np.asarray(g)).all()
    with pytest.raises(ValueError, match="target shape"):
        repa.repa_loss(pred, target[:, :5])
    with pytest.raises(ValueError, match="mask must have shape"):
        repa.repa_loss(pred, target, mask=jnp.ones((3, 6)))


# ------------------------------------------------------------------------------------ CFG drop
def _right_padded(b, l, rng):
    lengths = rng.integers(2, l + 1, size=b)
    return np.arange(l)[None, :] < lengths[:, None]


def test_cfg_drop_all_and_none():
    rng = np.random.default_rng(5)
    m = _right_padded(64, 9, rng)
    new, dropped = cfg_dropout.drop_prompt(jax.random.key(0), jnp.asarray(m), prob=1.0)
    assert bool(dropped.all())
    expect = np.zeros_like(m)
    expect[:, 0] = True
    np.testing.assert_array_equal(np.asarray(new), expect)
    new, dropped = cfg_dropout.drop_prompt(jax.random.key(0), jnp.asarray(m), prob=0.0)
    assert not bool(dropped.any())
    np.testing.assert_array_equal(np.asarray(new), m)


def test_cfg_drop_rate_and_padding():
    rng = np.random.default_rng(6)
    m = _right_padded(20_000, 12, rng)
    new, dropped = jax.jit(lambda k, x: cfg_dropout.drop_prompt(k, x, 0.1))(jax.random.key(1), jnp.asarray(m))
    new, dropped = np.asarray(new), np.asarray(dropped)
    assert abs(dropped.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(new[~dropped], m[~dropped])
    np.testing.assert_array_equal(new[dropped], np.asarray(cfg_dropout.uncond_prompt_mask(jnp.asarray(m[dropped]))))
    assert not (new & ~m).any()            # nothing that was padding becomes visible
    assert new[:, 0].all()                 # BOS always visible


def test_uncond_mask_keeps_first_real_tokens_with_left_padding():
    m = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 1, 1]], bool)
    np.testing.assert_array_equal(
        np.asarray(cfg_dropout.uncond_prompt_mask(m)),
        [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(
        np.asarray(cfg_dropout.uncond_prompt_mask(m, keep_first=2)),
        [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0], [0, 1, 0, 1, 0]])
    with pytest.raises(ValueError, match="prompt_mask must be"):
        cfg_dropout.uncond_prompt_mask(m[0])
    with pytest.raises(ValueError, match="prob must be"):
        cfg_dropout.drop_prompt(jax.random.key(0), m, prob=1.5)
