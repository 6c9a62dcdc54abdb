import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import networks


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm_net(weights, features, state, layers, scale):
    """A reference deep LSTM in NumPy (Sonnet gate order i, j, f, o; forget bias +1)."""
    hidden = features
    new_state = []
    for i in range(len(layers)):
        h, c = state[2 * i], state[2 * i + 1]
        w, b = weights[f"lstm_{i}"]["w_gates"], weights[f"lstm_{i}"]["b_gates"]
        gates = np.concatenate([hidden, h], axis=1) @ w + b
        gi, gj, gf, go = np.split(gates, 4, axis=1)
        c = c * sigmoid(gf + 1.0) + sigmoid(gi) * np.tanh(gj)
        hidden = np.tanh(c) * sigmoid(go)
        new_state += [hidden, c]
    out = hidden @ weights["linear"]["w"] + weights["linear"]["b"]
    return out * scale, new_state


def random_state(net, shape, rng):
    return tuple(rng.normal(size=s).astype(np.float32) for s in net.state_shapes(shape))


def test_coordinatewise_step_matches_numpy_reference():
    rng = np.random.default_rng(0)
    net = networks.CoordinateWiseDeepLSTM(layers=(4, 3), scale=0.5)
    weights = networks.weights_to_numpy(net.initial_weights(seed=3))
    weights["lstm_0"]["b_gates"] = rng.normal(size=16).astype(np.float32)
    g = rng.normal(size=(2, 3)).astype(np.float32)
    state = random_state(net, g.shape, rng)
    update, new_state = net.step(weights, tf.constant(g), state)
    want, want_state = numpy_lstm_net(weights, g.reshape(-1, 1), state, (4, 3), 0.5)
    np.testing.assert_allclose(update, want.reshape(2, 3), rtol=1e-5, atol=1e-6)
    for a, b in zip(new_state, want_state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_default_initialisation_is_truncated_normal_over_fan_in_with_zero_biases():
    net = networks.CoordinateWiseDeepLSTM(layers=(200, 200), preprocess_name="LogAndSign")
    weights = net.initial_weights(seed=0)
    w0 = weights["lstm_0"]["w_gates"].numpy()
    assert w0.shape == (2 + 200, 800)
    std = 1 / np.sqrt(202)
    assert np.abs(w0).max() <= 2 * std + 1e-6
    # Truncated at 2 std: the standard deviation is 0.88 of the untruncated one.
    assert 0.84 * std < w0.std() < 0.92 * std
    assert np.all(weights["lstm_1"]["b_gates"].numpy() == 0)
    assert weights["linear"]["w"].shape == (200, 1)
    again = net.initial_weights(seed=0)["lstm_0"]["w_gates"].numpy()
    np.testing.assert_array_equal(w0, again)
    other = net.initial_weights(seed=1)["lstm_0"]["w_gates"].numpy()
    assert not np.array_equal(w0, other)


def test_initializer_forms_follow_the_original():
    zeros = networks.CoordinateWiseDeepLSTM(layers=(3,), initializer="zeros").initial_weights()
    assert all(np.all(v.numpy() == 0) for f in zeros.values() for v in f.values())
    per_field = networks.CoordinateWiseDeepLSTM(
        layers=(3,), initializer={"b_gates": "ones", "w": np.full((3, 1), 2.0)}
    ).initial_weights(seed=0)
    assert np.all(per_field["lstm_0"]["b_gates"].numpy() == 1)
    assert np.all(per_field["linear"]["w"].numpy() == 2)
    assert np.any(per_field["lstm_0"]["w_gates"].numpy() != 0)  # default kept
    per_layer = networks.CoordinateWiseDeepLSTM(
        layers=(3,), initializer={"linear": "zeros", "lstm_0": {"w_gates": "ones"}}
    ).initial_weights(seed=0)
    assert np.all(per_layer["linear"]["b"].numpy() == 0)
    assert np.all(per_layer["lstm_0"]["w_gates"].numpy() == 1)
    with pytest.raises(ValueError, match=r"lstm_0/w_gates has shape \(2, 2\).*needs \(4, 12\)"):
        networks.CoordinateWiseDeepLSTM(layers=(3,), initializer={"w_gates": np.ones((2, 2))})


def test_no_hidden_layers_is_a_linear_rule():
    net = networks.CoordinateWiseDeepLSTM(
        layers=(), initializer={"w": [[-0.5]], "b": [0.25]}
    )
    g = tf.constant([1.0, -2.0, 4.0])
    update, state = net.step(net.initial_weights(), g, net.initial_state(g.shape))
    np.testing.assert_allclose(update, -0.5 * g.numpy() + 0.25)
    assert state == ()


def test_elementwise_nets_give_the_same_update_flat_or_per_parameter():
    net = networks.CoordinateWiseDeepLSTM(preprocess_name="LogAndSign", scale=0.1)
    weights = net.initial_weights(seed=2)
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=s).astype(np.float32) for s in [(3, 4), (5,), ()]]
    states = [random_state(net, g.shape, rng) for g in grads]
    flat_g = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
    flat_state = tuple(tf.concat(parts, 0) for parts in zip(*states))
    flat_update, _ = net.step(weights, flat_g, flat_state)
    per_param = tf.concat(
        [tf.reshape(net.step(weights, tf.constant(g), s)[0], [-1]) for g, s in zip(grads, states)], 0
    )
    np.testing.assert_allclose(flat_update, per_param, rtol=1e-6, atol=1e-7)


def test_kernel_lstm_updates_each_filter_from_its_own_kernel_slice():
    net = networks.KernelDeepLSTM(kernel_shape=(3, 3), layers=(5,))
    weights = net.initial_weights(seed=0)
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    assert net.state_shapes(g.shape) == ((8, 5), (8, 5))
    update, _ = net.step(weights, tf.constant(g), net.initial_state(g.shape))
    assert update.shape == g.shape
    # Changing one filter's gradient (in=1, out=2) changes only that filter's update.
    g2 = g.copy()
    g2[:, :, 1, 2] += 1.0
    update2, _ = net.step(weights, tf.constant(g2), net.initial_state(g.shape))
    changed = np.any(np.abs(update2.numpy() - update.numpy()) > 0, axis=(0, 1))
    assert changed[1, 2] and changed.sum() == 1
    # That filter's update is the standard net on its 9 values in (kh, kw) order.
    standard = networks.StandardDeepLSTM(output_size=9, layers=(5,))
    row = g[:, :, 1, 2].reshape(1, 9)
    want, _ = standard.step(weights, tf.constant(row), standard.initial_state(row.shape))
    np.testing.assert_allclose(update[:, :, 1, 2].numpy().reshape(1, 9), want, rtol=1e-5)
    with pytest.raises(ValueError, match="assign it only 4-D conv kernels"):
        net.state_shapes((5, 5, 2, 4))


def test_fixed_rule_nets_sgd_and_adam():
    g = tf.constant([[0.5, -1.0], [2.0, 0.0]])
    sgd = networks.Sgd(learning_rate=0.1)
    np.testing.assert_allclose(sgd.step({}, g, ())[0], -0.1 * g.numpy())
    adam = networks.Adam(learning_rate=0.01)
    state = adam.initial_state(g.shape)
    m = v = np.zeros(4)
    for t in range(1, 4):
        gt = g.numpy().reshape(-1) * t
        update, state = adam.step({}, tf.constant(gt.reshape(2, 2)), state)
        m = 0.9 * m + 0.1 * gt
        v = 0.999 * v + 0.001 * gt**2
        want = -0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(update.numpy().reshape(-1), want, rtol=1e-5, atol=1e-8)


def test_step_is_differentiable_in_weights_and_matches_finite_differences():
    net = networks.CoordinateWiseDeepLSTM(layers=(4,), preprocess_name="LogAndSign")
    weights = tf.nest.map_structure(
        lambda t: tf.Variable(tf.cast(t, tf.float64)), net.initial_weights(seed=0)
    )
    g = tf.constant([0.3, -0.02, 1e-4], tf.float64)

    def loss():
        update, _ = net.step(weights, g, tuple(tf.cast(s, tf.float64) for s in net.initial_state(g.shape)))
        return tf.reduce_sum(update**2 + update)

    with tf.GradientTape() as tape:
        value = loss()
    grad = tape.gradient(value, weights["lstm_0"]["w_gates"]).numpy()
    w = weights["lstm_0"]["w_gates"]
    eps = 1e-6
    for index in [(0, 0), (1, 5), (3, 12)]:
        base = w.numpy()
        bumped = base.copy()
        bumped[index] += eps
        w.assign(bumped)
        plus = loss().numpy()
        w.assign(base)
        np.testing.assert_allclose((plus - value.numpy()) / eps, grad[index], rtol=1e-3, atol=1e-7)


def test_save_and_load_round_trip(tmp_path):
    net = networks.CoordinateWiseDeepLSTM(layers=(6,), preprocess_name="LogAndSign",
                                          preprocess_options={"k": 10}, scale=0.1)
    weights = net.initial_weights(seed=4)
    path = str(tmp_path / "cw.npz")
    networks.save_weights(path, net, weights)
    assert os.listdir(tmp_path) == ["cw.npz"]  # no temporary file left behind
    name, options, loaded = networks.load_weights(path)
    assert name == "CoordinateWiseDeepLSTM"
    assert options == {"layers": [6], "preprocess_name": "LogAndSign",
                       "preprocess_options": {"k": 10}, "scale": 0.1}
    for module, fields in weights.items():
        for field, value in fields.items():
            np.testing.assert_array_equal(loaded[module][field], value)
    rebuilt = networks.load_net(path)
    np.testing.assert_array_equal(rebuilt.initial_weights()["linear"]["w"], weights["linear"]["w"])
    # The format is plain NumPy: no TensorFlow and no pickle needed to read it.
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["__l2l_tf__"]))
        assert meta["format_version"] == 1 and archive["lstm_0/w_gates"].shape == (8, 24)


def test_factory_builds_by_name_and_loads_weights(tmp_path):
    net = networks.factory("CoordinateWiseDeepLSTM", {"layers": (3,)})
    weights = net.initial_weights(seed=1)
    path = str(tmp_path / "n.npz")
    networks.save_weights(path, net, weights)
    loaded = networks.factory("CoordinateWiseDeepLSTM", {"layers": (3,)}, net_path=path)
    np.testing.assert_array_equal(loaded.initial_weights()["lstm_0"]["w_gates"], weights["lstm_0"]["w_gates"])
    with pytest.raises(ValueError, match=r"needs \(21, 80\)"):
        networks.factory("CoordinateWiseDeepLSTM", {"layers": (20,)}, net_path=path)
    with pytest.raises(ValueError, match="Unknown net 'LSTM'"):
        networks.factory("LSTM")
    with pytest.raises(ValueError, match="Bad net_options"):
        networks.factory("Sgd", {"lr": 0.1})


def test_corrupt_missing_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No net weights file"):
        networks.load_weights(str(tmp_path / "missing.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable l2l_tf net file"):
        networks.load_weights(str(bad))
    other = tmp_path / "other.npz"
    np.savez(other, __l2l_tf__=np.array(json.dumps({"format": "l2l_tf.net", "format_version": 99})))
    with pytest.raises(ValueError, match="version 99"):
        networks.load_weights(str(other))
    truncated = tmp_path / "truncated.npz"
    net = networks.CoordinateWiseDeepLSTM(layers=(3,))
    networks.save_weights(str(truncated), net, net.initial_weights(seed=0))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt"):
        networks.load_weights(str(truncated))


@pytest.mark.parametrize("name, keras_optimizer, options", [
    ("Sgd", lambda: keras.optimizers.SGD(0.1), {"learning_rate": 0.1}),
    ("Adam", lambda: keras.optimizers.Adam(0.01, epsilon=1e-8), {"learning_rate": 0.01}),
    ("Nag", lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
     {"learning_rate": 0.05, "momentum": 0.9}),
])
def test_fixed_rule_nets_match_keras_optimizers(name, keras_optimizer, options):
    net = networks.factory(name, options)
    rng = np.random.default_rng(0)
    variable = keras.Variable(rng.normal(size=(3, 2)).astype(np.float32))
    param = tf.constant(variable.numpy())
    state = net.initial_state(param.shape)
    opt = keras_optimizer()
    for _ in range(5):
        g = tf.constant(rng.normal(size=(3, 2)).astype(np.float32))
        opt.apply_gradients([(g, variable)])
        update, state = net.step({}, g, state)
        param = param + update
    np.testing.assert_allclose(variable.numpy(), param.numpy(), rtol=1e-5, atol=1e-6)


def test_rmsprop_net_follows_its_formula():
    net = networks.RMSprop(learning_rate=0.01, decay=0.9, epsilon=1e-8)
    state = net.initial_state((2,))
    v = np.zeros(2)
    for g in ([0.5, -1.0], [0.1, 2.0]):
        update, state = net.step({}, tf.constant(g), state)
        v = 0.9 * v + 0.1 * np.square(g)
        np.testing.assert_allclose(update, -0.01 * np.array(g) / (np.sqrt(v) + 1e-8), rtol=1e-5)


def test_saved_files_get_the_usual_permissions(tmp_path):
    net = networks.Sgd()
    path = tmp_path / "sgd.npz"
    networks.save_weights(str(path), net, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_weights_trained_with_other_constants_are_refused_not_misused(tmp_path):
    paper = networks.CoordinateWiseDeepLSTM(layers=(3,), preprocess_name="LogAndSign",
                                            preprocess_options={"k": 10}, scale=0.1)
    path = str(tmp_path / "paper.npz")
    networks.save_weights(path, paper, paper.initial_weights(seed=0))
    original_constants = {"layers": (3,), "preprocess_name": "LogAndSign",
                          "preprocess_options": {"k": 5}, "scale": 0.01}
    with pytest.raises(ValueError, match="pass the options it was trained with"):
        networks.factory("CoordinateWiseDeepLSTM", original_constants, net_path=path)
    assert networks.load_net(path).scale == 0.1


def test_a_crash_while_saving_leaves_the_old_file_intact(tmp_path, monkeypatch):
    net = networks.CoordinateWiseDeepLSTM(layers=(3,))
    path = str(tmp_path / "cw.npz")
    networks.save_weights(path, net, net.initial_weights(seed=0))
    before = (tmp_path / "cw.npz").read_bytes()

    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(np, "savez", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        networks.save_weights(path, net, net.initial_weights(seed=1))
    assert (tmp_path / "cw.npz").read_bytes() == before
    assert os.listdir(tmp_path) == ["cw.npz"]


def test_untrained_tensorwise_lstm_is_keras_adam():
    """Its output layer starts at zero: the nominal step, Keras's Adam, exactly."""
    net = networks.TensorwiseLSTM(learning_rate=3e-3)
    weights = net.initial_weights(seed=0)
    rng = np.random.default_rng(0)
    variable = keras.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    adam = keras.optimizers.Adam(3e-3)
    value, state = tf.constant(variable.numpy()), net.initial_state((4, 3))
    for _ in range(5):
        gradient = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))
        adam.apply_gradients([(gradient, variable)])
        update, state = net.step(weights, gradient, state)
        value += update
    np.testing.assert_allclose(value.numpy(), variable.numpy(), rtol=1e-6, atol=1e-7)


def tensorwise_with_random_outputs(max_factor=30.0):
    net = networks.TensorwiseLSTM(layers=(6,), max_factor=max_factor)
    weights = networks.weights_to_numpy(net.initial_weights(seed=2))
    weights["linear"]["w"] = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32) * 5
    return net, weights


def test_tensorwise_lstm_ignores_the_scale_of_the_loss_and_bounds_its_step():
    """Its features and Adam's direction do not change when the loss (so every gradient) is
    scaled: loss scales need no meta-training. Its step size stays within max_factor of the
    learning rate, times at most 2 (Adam's direction plus the gradient term, each <~ 1)."""
    net, weights = tensorwise_with_random_outputs()
    rng = np.random.default_rng(0)
    gradients = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(6)]
    updates = {}
    for scale in (1.0, 1000.0):  # Adam's epsilon (1e-7) aside
        state = net.initial_state((5, 4))
        updates[scale] = []
        for g in gradients:
            update, state = net.step(weights, tf.constant(g * scale), state)
            updates[scale].append(update.numpy())
    np.testing.assert_allclose(updates[1000.0], updates[1.0], rtol=1e-4, atol=1e-8)
    largest = max(np.abs(u).max() for u in updates[1.0])
    assert 0 < largest <= 2 * 30.0 * 1e-3 * 1.01


def largest_factor_weights(net):
    """`net`'s untrained weights with the output bias at tanh^-1(1): every tensor's factor is
    `max_factor` (30) and its gradient weight 0, whatever the LSTM reads (its output layer
    starts at zero)."""
    weights = networks.weights_to_numpy(net.initial_weights(seed=0))
    weights["linear"]["b"] = np.array([20.0, 0.0], np.float32)
    return weights


def test_vector_max_factor_bounds_the_step_of_vectors_and_scalars_only():
    """With the LSTM at its largest factor (30), a bias and a scalar step at most
    `vector_max_factor` times Adam's step and a kernel still at 30 times."""
    capped = networks.TensorwiseLSTM(layers=(6,), vector_max_factor=1.0)
    free = networks.TensorwiseLSTM(layers=(6,))
    weights = largest_factor_weights(free)
    rng = np.random.default_rng(0)
    for shape, factor in (((4, 3), 30.0), ((3,), 1.0), ((), 1.0)):
        gradient = tf.constant(rng.normal(size=shape).astype(np.float32))
        adam, _ = free.step(free.initial_weights(seed=0), gradient, free.initial_state(shape))
        for net, expected in ((capped, factor), (free, 30.0)):
            update, _ = net.step(weights, gradient, net.initial_state(shape))
            np.testing.assert_allclose(update.numpy(), expected * adam.numpy(), rtol=1e-5)


def test_the_decay_in_time_is_decay_steps_over_t():
    """After `decay_steps` the step is the undecayed net's times decay_steps / t (t = 1 at the
    first step), and so is `decay_rate`, a weight decay's rate."""
    undecayed = networks.TensorwiseLSTM(layers=(6,))
    decayed = networks.TensorwiseLSTM(layers=(6,), decay_steps=4)
    weights = undecayed.initial_weights(seed=0)
    states = {net: net.initial_state((3, 2)) for net in (undecayed, decayed)}
    rng = np.random.default_rng(0)
    for t in range(1, 10):
        np.testing.assert_allclose(decayed.decay_rate(states[decayed]).numpy(),
                                   1e-3 * min(1.0, 4 / t), rtol=1e-6)
        gradient = tf.constant(rng.normal(size=(3, 2)).astype(np.float32))
        updates = {}
        for net in (undecayed, decayed):
            updates[net], states[net] = net.step(weights, gradient, states[net])
        np.testing.assert_allclose(updates[decayed].numpy() / updates[undecayed].numpy(),
                                   min(1.0, 4 / t), rtol=1e-5)


def step_on_scaled_gradients(weights, states, scales, rng):
    """Steps every net of `states` (updated in place) on the same gradients, N(0, 1) times
    `scales[t - 1]` at step t; yields t, the gradients' RMS over ~100 steps (an average of
    the mean square with weight 0.99, debiased) relative to step 5's (1 before step 5), as
    the gradient decay reads it, and each net's update."""
    power, reference = 0.0, None
    steps = {net: tf.function(net.step) for net in states}  # traced once: ~10x eager's pace
    for t, scale in enumerate(scales, start=1):
        gradient = (scale * rng.normal(size=(5, 4))).astype(np.float32)
        power = 0.99 * power + 0.01 * np.mean(np.square(gradient.astype(np.float64)))
        rms = np.sqrt(power / (1 - 0.99 ** t))
        if t == 5:
            reference = rms
        updates = {}
        for net in states:
            updates[net], states[net] = steps[net](weights, tf.constant(gradient), states[net])
        yield t, 1.0 if reference is None else rms / reference, updates


def latched_step_ratios(weights, nets, scales, seed):
    """Steps the two `nets` on the same scaled gradients (`step_on_scaled_gradients`, from
    fresh states); yields t, the gradient ratio r, the lowest r since step 5 (1 until then)
    and the first net's update divided by the second's."""
    states = {net: net.initial_state((5, 4)) for net in nets}
    lowest = 1.0
    for t, ratio, updates in step_on_scaled_gradients(weights, states, scales,
                                                      np.random.default_rng(seed)):
        lowest = min(lowest, ratio) if t > 5 else 1.0
        yield t, ratio, lowest, updates[nets[0]].numpy() / updates[nets[1]].numpy()


@pytest.mark.parametrize("decay_steps, gradient_decay_steps", [(5, None), (8, 5), (None, 5)])
def test_the_gradient_decay_scales_the_step_with_the_gradient_s_rms_after_its_start(
        decay_steps, gradient_decay_steps):
    """With `gradient_decay=q` the step after `gradient_decay_steps` (by default
    `decay_steps`; here step 5 in every case, before, at or without the decay in time) is the
    same net's without it times min(1, rms / rms at step 5) ** q, both RMS over ~100 steps
    (an average with weight 0.99, debiased); before, and while the gradients stay as large,
    the steps are the same."""
    _, weights = tensorwise_with_random_outputs()
    plain = networks.TensorwiseLSTM(layers=(6,), decay_steps=decay_steps)
    slowed = networks.TensorwiseLSTM(layers=(6,), decay_steps=decay_steps, gradient_decay=1.5,
                                     gradient_decay_steps=gradient_decay_steps)
    assert slowed.get_config()["gradient_decay"] == 1.5
    assert slowed.get_config()["gradient_decay_steps"] == 5
    rng = np.random.default_rng(0)
    scales = [1.0] * 5 + [0.5, 0.1, 0.1, 2.0, 2.0]
    states = {net: net.initial_state((5, 4)) for net in (plain, slowed)}
    factors = []
    for t, ratio, updates in step_on_scaled_gradients(weights, states, scales, rng):
        expected = 1.0 if t <= 5 else min(1.0, ratio) ** 1.5
        np.testing.assert_allclose(updates[slowed].numpy() / updates[plain].numpy(), expected,
                                   rtol=1e-4)
        factors.append(expected)
    assert factors[7] < 0.75 and factors[9] == 1.0  # gradients shrunk; grown back: full step
    # A state saved before the gradient decay existed has no reference (0): the step is as
    # before, it does not stop.
    *rest, power_state, _ = states[slowed]
    unreferenced = (*rest, power_state, tf.zeros([1]))
    gradient = tf.constant(0.01 * rng.normal(size=(5, 4)).astype(np.float32))
    np.testing.assert_allclose(slowed.step(weights, gradient, unreferenced)[0].numpy(),
                               plain.step(weights, gradient, states[plain])[0].numpy(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="gradient_decay must be at least 0"):
        networks.TensorwiseLSTM(decay_steps=5, gradient_decay=-1)
    with pytest.raises(ValueError, match="set one of them"):
        networks.TensorwiseLSTM(gradient_decay=1)
    with pytest.raises(ValueError, match="gradient_decay_steps must be at least 1"):
        networks.TensorwiseLSTM(decay_steps=5, gradient_decay=1, gradient_decay_steps=0)


def test_the_gradient_stop_leaves_a_tensor_above_its_ratio_and_stops_one_below():
    """With `gradient_stop=r0` the step after `gradient_decay_steps` is the gradient-decayed
    net's times min(1, r / r0) ** gradient_stop_exponent, r the same RMS ratio the gradient
    decay reads (here without a burstiness gate: its factor is 1): a tensor whose gradients
    have shrunk to half keeps the decayed step, one at a tenth nearly stops."""
    _, weights = tensorwise_with_random_outputs()
    options = dict(layers=(6,), decay_steps=5, gradient_decay=2.0)
    decayed = networks.TensorwiseLSTM(**options)
    stopped = networks.TensorwiseLSTM(**options, gradient_stop=0.3, gradient_stop_exponent=8)
    assert stopped.get_config()["gradient_stop"] == 0.3
    assert stopped.get_config()["gradient_stop_exponent"] == 8.0
    scales = [1.0] * 5 + [0.5] * 20 + [0.1] * 300
    states = {net: net.initial_state((5, 4)) for net in (decayed, stopped)}
    ratios = {}
    for t, ratio, updates in step_on_scaled_gradients(weights, states, scales,
                                                      np.random.default_rng(0)):
        expected = min(1.0, ratio / 0.3) ** 8 if t > 5 else 1.0
        ratios[t] = updates[stopped].numpy() / updates[decayed].numpy()
        np.testing.assert_allclose(ratios[t], expected, rtol=1e-3)
    assert np.all(ratios[25] == 1.0)  # r about 0.6: untouched
    assert np.all(ratios[325] < 1e-3)  # r about 0.1: stopped
    with pytest.raises(ValueError, match="gradient_stop is a ratio"):
        networks.TensorwiseLSTM(**options, gradient_stop=1.5)
    with pytest.raises(ValueError, match="set gradient_decay too"):
        networks.TensorwiseLSTM(decay_steps=5, gradient_stop=0.3)
    with pytest.raises(ValueError, match="gradient_stop_exponent must be above 0"):
        networks.TensorwiseLSTM(**options, gradient_stop=0.3, gradient_stop_exponent=0)


def test_the_latched_gradient_stop_holds_its_deepest_point_when_the_gradients_grow_back():
    """With `gradient_stop_latch` the stop reads the lowest ratio r reached so far instead of
    the current one: gradients that grow back after the stop (a burst sending training uphill,
    whose larger gradients would lift the stop and enlarge the step) leave the tensor stopped.
    The gradient decay still reads the current r. Until r first rises the two agree."""
    _, weights = tensorwise_with_random_outputs()
    options = dict(layers=(6,), decay_steps=5, gradient_decay=2.0, gradient_stop=0.3)
    free = networks.TensorwiseLSTM(**options)
    latched = networks.TensorwiseLSTM(**options, gradient_stop_latch=True)
    assert latched.get_config()["gradient_stop_latch"] is True
    assert len(latched.initial_state((5, 4))) == len(free.initial_state((5, 4))) + 1
    scales = [1.0] * 5 + [0.1] * 300 + [1.0] * 200
    ratios = {}
    for t, ratio, lowest, step_ratio in latched_step_ratios(weights, (latched, free), scales, 0):
        expected = (min(1.0, lowest / 0.3) / min(1.0, ratio / 0.3)) ** 8
        ratios[t] = step_ratio
        np.testing.assert_allclose(step_ratio, expected, rtol=2e-3)
    assert np.all(ratios[305] == 1.0)  # still falling: the same step
    assert np.all(ratios[505] < 1e-3)  # grown back past 0.3: the free stop has lifted
    with pytest.raises(ValueError, match="gradient_stop is 0"):
        networks.TensorwiseLSTM(layers=(6,), decay_steps=5, gradient_decay=2.0,
                                gradient_stop_latch=True)


def test_a_tensor_whose_gradients_rise_restart_ratio_fold_starts_afresh():
    """With `restart_ratio=R` a tensor whose gradient RMS (over ~100 steps) rises R-fold above
    its reference at `gradient_decay_steps` gets a zero state, as a new optimizer's: from
    then on it steps as a fresh net does on the same gradients, whereas without it the
    latched stop keeps it stopped (a second task). Gradients that only grow back to the
    reference's size (a burst within a task, which the latches hold back) restart nothing."""
    _, weights = tensorwise_with_random_outputs()
    options = dict(layers=(6,), warmup_steps=3, decay_steps=5, gradient_decay=2.0,
                   gradient_stop=0.3, gradient_stop_latch=True, gradient_decay_latch=1.1)
    plain = networks.TensorwiseLSTM(**options)
    restarting = networks.TensorwiseLSTM(**options, restart_ratio=10)
    assert restarting.get_config()["restart_ratio"] == 10.0
    assert len(restarting.initial_state((5, 4))) == len(plain.initial_state((5, 4)))
    steps = {net: tf.function(net.step) for net in (plain, restarting)}
    for later_scale, restarts in ((1.0, False), (30.0, True)):
        rng = np.random.default_rng(0)
        states = {net: net.initial_state((5, 4)) for net in steps}
        fresh_state = None
        restarted_at = []
        plain_ratios = []  # what the plain net's step read: the restart's test, unclamped
        for t, scale in enumerate([1.0] * 5 + [0.1] * 300 + [later_scale] * 60, start=1):
            gradient = tf.constant((scale * rng.normal(size=(5, 4))).astype(np.float32))
            updates = {}
            for net in steps:
                updates[net], states[net] = steps[net](weights, gradient, states[net])
            plain_ratios.append(float(plain.gradient_rms_ratio(states[plain])))
            if fresh_state is not None:
                fresh_update, fresh_state = steps[restarting](weights, gradient, fresh_state)
                np.testing.assert_allclose(updates[restarting].numpy(), fresh_update.numpy(),
                                           rtol=1e-6)
            elif not restarted_at:
                np.testing.assert_allclose(updates[restarting].numpy(),
                                           updates[plain].numpy(), rtol=1e-6)
            if states[restarting][2].numpy()[0] == 0:
                assert all(not np.any(entry.numpy()) for entry in states[restarting])
                restarted_at.append(t)
                fresh_state = restarting.initial_state((5, 4))
        # The diagnostic reads the restart's test off the state: the restart comes at the
        # first step whose ratio exceeds R (until then both nets have the same state).
        exceeds = [t for t, ratio in enumerate(plain_ratios, start=1) if ratio > 10]
        assert restarted_at[:1] == exceeds[:1]
        if restarts:
            assert len(restarted_at) == 1 and 306 < restarted_at[0] < 330, restarted_at
            # The plain net stays stopped; the restarted one takes a fresh net's steps.
            assert np.abs(updates[plain].numpy()).max() < 1e-2 * np.abs(fresh_update.numpy()).max()
        else:
            assert restarted_at == [] and 0.5 < max(plain_ratios) < 10
    with pytest.raises(ValueError, match="restart_ratio .* above 1"):
        networks.TensorwiseLSTM(**options, restart_ratio=1.0)
    with pytest.raises(ValueError, match="set gradient_decay too"):
        networks.TensorwiseLSTM(layers=(6,), decay_steps=5, restart_ratio=10)
    without_decay = networks.TensorwiseLSTM(layers=(6,))
    with pytest.raises(ValueError, match="gradient_decay=0 does not keep"):
        without_decay.gradient_rms_ratio(without_decay.initial_state((5, 4)))


def test_restart_delay_restarts_the_first_tensors_and_the_rest_n_steps_later():
    """With `restart_delay=N` the restart is read over the model: the first tensor whose
    gradients rise R-fold restarts at once (a new task reaches the last layer first); a
    tensor that crosses R within the next steps does not, and N steps after the first
    restart every tensor older than `gradient_decay_steps` restarts, whether or not it ever
    crossed. Without the delay each tensor restarts when it crosses, and one that never
    crosses keeps its state. With `restart_follow_ratio=F` only the tensors whose ratio is
    above F then follow: the one whose gradients never rose keeps its state. Before the
    first restart the nets step to the same bits."""
    _, weights = tensorwise_with_random_outputs()
    options = dict(layers=(6,), warmup_steps=3, decay_steps=5, gradient_decay=2.0,
                   gradient_stop=0.3, gradient_stop_latch=True, gradient_decay_latch=1.1,
                   restart_ratio=10, gradient_decay_steps=50)
    delay = 40
    nets = {"own": networks.TensorwiseLSTM(**options),
            "delay": networks.TensorwiseLSTM(**options, restart_delay=delay),
            "follow": networks.TensorwiseLSTM(**options, restart_delay=delay,
                                              restart_follow_ratio=2)}
    assert nets["delay"].pooled_shape() == (1,) and nets["own"].pooled_shape() is None
    assert nets["delay"].get_config()["restart_delay"] == delay
    steps = {kind: tf.function(net.step) for kind, net in nets.items()}
    rng = np.random.default_rng(0)
    states = {kind: [net.initial_state((5, 4))] * 3 for kind, net in nets.items()}
    restarted = {kind: [] for kind in nets}  # (step, tensor) whose state was zeroed
    # Three tensors: gradients that rise 30-fold, 22-fold (crossing later) and not at all.
    for t in range(1, 306 + 60):
        scales = [0.1] * 3 if t <= 305 else [3.0, 2.2, 0.1]
        gradients = [tf.constant((s * rng.normal(size=(5, 4))).astype(np.float32))
                     for s in scales]
        updates = {}
        for kind, net in nets.items():
            pooled = () if net.pooled_shape() is None else (net.pooled(states[kind]),)
            updates[kind] = []
            for i, gradient in enumerate(gradients):
                update, states[kind][i] = steps[kind](weights, gradient, states[kind][i],
                                                      *pooled)
                updates[kind].append(update.numpy())
                if states[kind][i][2].numpy()[0] == 0:
                    assert all(not np.any(entry.numpy()) for entry in states[kind][i])
                    restarted[kind].append((t, i))
        if not restarted["own"]:
            for kind in ("delay", "follow"):
                for delayed_update, own_update in zip(updates[kind], updates["own"]):
                    np.testing.assert_array_equal(delayed_update, own_update)
    (first, tensor), (second, later_tensor) = restarted["own"]
    assert (tensor, later_tensor) == (0, 1) and 306 < first < second < first + delay, restarted
    assert restarted["delay"] == [(first, 0), (first + delay, 1), (first + delay, 2)]
    assert restarted["follow"] == [(first, 0), (first + delay, 1)]
    assert nets["follow"].get_config()["restart_follow_ratio"] == 2
    with pytest.raises(ValueError, match="set restart_delay too"):
        networks.TensorwiseLSTM(**options, restart_follow_ratio=2)
    with pytest.raises(ValueError, match="from 1 to below restart_ratio"):
        networks.TensorwiseLSTM(**options, restart_delay=delay, restart_follow_ratio=10)
    with pytest.raises(ValueError, match="restart_delay is how many steps .* got 2.5"):
        networks.TensorwiseLSTM(**options, restart_delay=2.5)
    with pytest.raises(ValueError, match="below gradient_decay_steps"):
        networks.TensorwiseLSTM(**options, restart_delay=50)
    with pytest.raises(ValueError, match="set restart_ratio too"):
        networks.TensorwiseLSTM(**{**options, "restart_ratio": None}, restart_delay=3)

def drift_brake_run(curvature, steps, drift_brake_steps, slope=0.0):
    """Runs an untrained `TensorwiseLSTM` (Adam's step) with `drift_brake=2` on a noisy
    quadratic, `gradient = curvature * x + slope + noise` (unit noise) from x = 0, and
    returns the updates it took, the updates the same net without the brake would take from
    the same states, and the last x."""
    braked = networks.TensorwiseLSTM(layers=(6,), drift_brake=2.0,
                                     drift_brake_steps=drift_brake_steps)
    unbraked = networks.TensorwiseLSTM(layers=(6,), drift_brake=2.0, drift_brake_steps=1e9)
    weights = braked.initial_weights()
    steps_of = {net: tf.function(net.step) for net in (braked, unbraked)}
    rng = np.random.default_rng(0)
    x = np.zeros((5, 4), np.float32)
    state = braked.initial_state(x.shape)
    taken, unbraked_updates = [], []
    for _ in range(steps):
        gradient = tf.constant((curvature * x + slope + rng.normal(size=x.shape))
                               .astype(np.float32))
        unbraked_updates.append(steps_of[unbraked](weights, gradient, state)[0].numpy())
        update, state = steps_of[braked](weights, gradient, state)
        taken.append(update.numpy())
        x = x + taken[-1]
    return np.array(taken), np.array(unbraked_updates), x


def reference_drift_sums(updates):
    """The drift brake's averages `[<D, u>, |u|^2 / 2]` as each step reads them (before its
    update), from the updates a tensor took: D <- 0.99 (D + u), the averages over ~100 steps."""
    displacement = np.zeros_like(updates[0])
    sums = np.zeros(2)
    read = []
    for update in updates:
        read.append(sums)
        sums = 0.99 * sums + 0.01 * np.array([np.sum(displacement * update),
                                              0.5 * np.sum(update ** 2)])
        displacement = 0.99 * (displacement + update)
    return np.array(read)


def reference_brake(sums, start=150):
    """The brake's factor per step from the averages it reads: clip(q / 2, 0.1, 1) after
    step `start`, q = <D, u> / (|u|^2 / 2)."""
    factor = np.clip(sums[:, 0] / (sums[:, 1] + 1e-30) / 2.0, 0.1, 1.0)
    return np.where(np.arange(1, len(sums) + 1) > start, factor, 1.0)


def test_the_drift_brake_slows_a_tensor_that_jitters_about_a_point_and_not_one_that_drifts():
    """`drift_brake=q0` multiplies a tensor's step after step `drift_brake_steps` by
    clip(q / q0, 0.1, 1), q = avg <D, u> / avg |u|^2 / 2 over ~100 steps, D the displacement
    from the average of the last ~100 values (D <- 0.99 (D + u)), as the last step left
    them: checked against a NumPy reference from the updates taken. On a noisy slope the
    parameters drift and the brake stays off; where a strong curvature holds them about the
    minimum (q near -1, the value of a stationary process) it brakes, and the parameters
    sit closer to the minimum than the unbraked net's."""
    taken, unbraked, braked_x = drift_brake_run(curvature=1000.0, steps=600,
                                                drift_brake_steps=150)
    expected = reference_brake(reference_drift_sums(taken))
    np.testing.assert_allclose(taken, expected[:, None, None] * unbraked, rtol=1e-4, atol=1e-12)
    assert np.all(expected[:150] == 1) and expected[200:].mean() < 0.5, expected[200:].mean()

    # On a noisy slope the parameters drift: the brake never acts.
    drifting, drifting_unbraked, _ = drift_brake_run(curvature=0.0, steps=400,
                                                     drift_brake_steps=150, slope=0.3)
    np.testing.assert_array_equal(drifting, drifting_unbraked)

    # Jittering about the minimum, the braked parameters end closer to it.
    _, _, unbraked_x = drift_brake_run(curvature=1000.0, steps=600, drift_brake_steps=1e9)
    assert np.mean(braked_x ** 2) < 0.5 * np.mean(unbraked_x ** 2)

    with pytest.raises(ValueError, match="drift_brake is the drift ratio"):
        networks.TensorwiseLSTM(layers=(6,), drift_brake=-1)
    with pytest.raises(ValueError, match="drift_brake_steps is the step after which"):
        networks.TensorwiseLSTM(layers=(6,), drift_brake=2, drift_brake_steps=0)


def pooled_drift_brake_run(scope, second_curvature, second_slope, steps=400):
    """Steps two tensors with one untrained `TensorwiseLSTM` (`drift_brake=2` from step 150,
    `drift_brake_scope=scope`) on noisy quadratics from 0: a 5 x 4 one held by a strong
    curvature, and a 20 x 10 one with `second_curvature` and `second_slope`. Returns, per
    tensor, the updates taken and those the net without the brake would take from the same
    states."""
    braked = networks.TensorwiseLSTM(layers=(6,), drift_brake=2.0, drift_brake_steps=150,
                                     drift_brake_scope=scope)
    unbraked = networks.TensorwiseLSTM(layers=(6,), drift_brake=2.0, drift_brake_steps=1e9)
    weights = braked.initial_weights()
    pooled = () if braked.pooled_shape() is None else (braked.pooled,)
    step = tf.function(lambda g, s, *p: braked.step(weights, g, s, *p))
    unbraked_step = tf.function(lambda g, s: unbraked.step(weights, g, s))
    rng = np.random.default_rng(0)
    curvatures, slopes = (1000.0, second_curvature), (0.0, second_slope)
    xs = [np.zeros((5, 4), np.float32), np.zeros((20, 10), np.float32)]
    states = [braked.initial_state(x.shape) for x in xs]
    taken, unbraked_updates = [[], []], [[], []]
    for _ in range(steps):
        reading = tuple(read(states) for read in pooled)
        for i in range(2):
            gradient = tf.constant((curvatures[i] * xs[i] + slopes[i]
                                    + rng.normal(size=xs[i].shape)).astype(np.float32))
            unbraked_updates[i].append(unbraked_step(gradient, states[i])[0].numpy())
            update, states[i] = step(gradient, states[i], *reading)
            taken[i].append(update.numpy())
            xs[i] = xs[i] + taken[i][-1]
    return [np.array(t) for t in taken], [np.array(u) for u in unbraked_updates]


def test_the_pooled_drift_brake_brakes_the_tensors_a_net_steps_as_one():
    """`drift_brake_scope="net"`: every tensor's step is multiplied by clip(q / q0, 0.1, 1)
    with one q for all, the sums over the tensors of their ~100-step averages of <D, u> over
    the sums of their |u|^2 / 2, as the last step left them (`pooled`, read before the
    step): checked against a NumPy reference. A small tensor that only jitters beside a
    larger one that drifts is braked with its own q ("tensor") and not with the pooled one;
    where both jitter, the pooled brake slows both."""
    for second_curvature, second_slope in ((0.0, 0.3), (1000.0, 0.0)):
        taken, unbraked = pooled_drift_brake_run("net", second_curvature, second_slope)
        expected = reference_brake(sum(map(reference_drift_sums, taken)))
        for t, u in zip(taken, unbraked):
            np.testing.assert_allclose(t, expected[:, None, None] * u, rtol=1e-4, atol=1e-12)
        if second_slope:  # the larger tensor drifts: the pooled q stays high, no brake
            assert np.all(expected == 1.0), expected.min()
        else:  # both jitter: both braked
            assert expected[200:].mean() < 0.5, expected[200:].mean()

    # Read per tensor, the small jittering tensor beside the drifting one is braked.
    taken, unbraked = pooled_drift_brake_run("tensor", 0.0, 0.3)
    own_factor = np.abs(taken[0][200:]).sum() / np.abs(unbraked[0][200:]).sum()
    assert own_factor < 0.5, own_factor
    np.testing.assert_array_equal(taken[1], unbraked[1])

    net = networks.TensorwiseLSTM(layers=(6,), drift_brake=2.0, drift_brake_scope="net")
    state = net.initial_state((3,))
    with pytest.raises(ValueError, match="pass step\\(..., pooled=net.pooled\\(states\\)\\)"):
        net.step(net.initial_weights(), tf.ones([3]), state)
    with pytest.raises(ValueError, match='drift_brake_scope is whose drift ratio'):
        networks.TensorwiseLSTM(layers=(6,), drift_brake=2.0, drift_brake_scope="model")
    with pytest.raises(ValueError, match="set drift_brake too"):
        networks.TensorwiseLSTM(layers=(6,), drift_brake_scope="net")
    assert networks.TensorwiseLSTM(layers=(6,), drift_brake=2.0).pooled_shape() is None


def distance_boost_run(minimum, curvature, steps=400, boost_steps=150, read_floor=0.0,
                       noise=1.0, new_task_of_the_second=None, read_ceiling=None,
                       steeper_from=None):
    """Steps two tensors (5 x 4 and 20 x 10) from 0 with one untrained `TensorwiseLSTM`
    (`distance_boost=0.05`, cap 4, from step `boost_steps`, `distance_boost_read_floor`; a
    decay in time from step 300) on quadratics `curvature / 2 (x - minimum) ** 2` (each one
    number, or a pair: one per tensor) whose gradients carry Gaussian noise of deviation
    `noise`. After step `new_task_of_the_second`, if given, the second tensor's state is
    zeroed (as `restart_ratio` does) and its minimum moves to where it is, held there with
    curvature 1000: a new task on which it only jitters. Returns, per tensor, the gradients,
    the updates taken and those the same net without the boost would take from the same
    states. From step `steeper_from`, if given, the gradients are 3x larger, noise too (as an
    embedding's grow with the head that reads it); `read_ceiling` is the net's
    `distance_boost_read_ceiling`."""
    options = dict(layers=(6,), decay_steps=300, distance_boost=0.05, distance_boost_cap=4.0,
                   distance_boost_read_floor=read_floor, distance_boost_read_ceiling=read_ceiling)
    boosted = networks.TensorwiseLSTM(**options, distance_boost_steps=boost_steps)
    unboosted = networks.TensorwiseLSTM(**options, distance_boost_steps=1e9)
    weights = boosted.initial_weights()
    step = tf.function(lambda g, s, p: boosted.step(weights, g, s, p))
    unboosted_step = tf.function(lambda g, s, p: unboosted.step(weights, g, s, p))
    rng = np.random.default_rng(0)
    xs = [np.zeros((5, 4), np.float32), np.zeros((20, 10), np.float32)]
    minima, curvatures = list(np.broadcast_to(minimum, 2)), list(np.broadcast_to(curvature, 2))
    states = [boosted.initial_state(x.shape) for x in xs]
    gradients, taken, unboosted_updates = [[], []], [[], []], [[], []]
    for k in range(steps):
        if k == new_task_of_the_second:
            states[1] = tuple(tf.zeros_like(entry) for entry in states[1])
            minima[1], curvatures[1] = xs[1].copy(), 1000.0
        reading = boosted.pooled(states)
        for i in range(2):
            steepness = 3.0 if steeper_from is not None and k >= steeper_from else 1.0
            gradient = tf.constant((steepness * (curvatures[i] * (xs[i] - minima[i])
                                    + noise * rng.normal(size=xs[i].shape))).astype(np.float32))
            gradients[i].append(gradient.numpy())
            unboosted_updates[i].append(unboosted_step(gradient, states[i], reading)[0].numpy())
            update, states[i] = step(gradient, states[i], reading)
            taken[i].append(update.numpy())
            xs[i] = xs[i] + taken[i][-1]
    return [np.array(g) for g in gradients], [np.array(t) for t in taken], \
        [np.array(u) for u in unboosted_updates]


def reference_boost(gradients, taken, boost_steps=150, d0=0.05, cap=4.0, decay_steps=300,
                    read_floor=0.0, restart=None, read_ceiling=np.inf):
    """Each tensor's boost per step from the tensors' gradients and updates, in NumPy:
    Prodigy's estimate `sum n / sum |s|_1` as the last step left the sums (n <- b n - <g, T>,
    s <- b s + g, b = sqrt(0.999), T the travel so far), each tensor's largest d of it up to
    its own step `decay_steps`, and after its step `boost_steps` `1 + (clip(d / d0, 1, cap)
    - 1) x decay_steps / max(t, decay_steps)`; d is read only while `read_floor` <= r <=
    `read_ceiling`, r^2 =
    sum P / sum P_ref as the last step left them (P each tensor's sum of squared gradients, a
    mean over its first 100 steps, then an average with weight 0.99; P_ref its value at its
    step `boost_steps`). `restart=(k, i)` zeroes tensor i's sums, powers, d, travel and
    count before step k. Also returns, per tensor and step, whether d was read."""
    beta = 0.999 ** 0.5
    count = len(gradients)
    t, n, largest = [0] * count, [0.0] * count, [0.0] * count
    s = [np.zeros_like(g[0], np.float64) for g in gradients]
    travel = [np.zeros_like(g[0], np.float64) for g in gradients]
    power, power_reference = [0.0] * count, [0.0] * count
    boosts, read = [[] for _ in gradients], [[] for _ in gradients]
    for k in range(len(gradients[0])):
        if restart is not None and k == restart[0]:
            i = restart[1]
            t[i], n[i], largest[i], power[i], power_reference[i] = 0, 0.0, 0.0, 0.0, 0.0
            s[i], travel[i] = np.zeros_like(s[i]), np.zeros_like(travel[i])
        estimate = sum(n) / (sum(np.abs(x).sum() for x in s) + 1e-30)
        power_ratio = sum(power) / (sum(power_reference) + 1e-30)
        for i, (g, u) in enumerate(zip(gradients, taken)):
            t[i] += 1
            read[i].append(t[i] <= decay_steps
                           and read_floor ** 2 <= power_ratio <= read_ceiling ** 2)
            if read[i][-1]:
                largest[i] = max(largest[i], estimate)
            fade = decay_steps / max(t[i], decay_steps)
            boosts[i].append(1.0 + (np.clip(largest[i] / d0, 1.0, cap) - 1.0) * fade
                             if t[i] > boost_steps else 1.0)
            n[i] = beta * n[i] - np.sum(g[k] * travel[i])
            s[i] = beta * s[i] + g[k]
            travel[i] = travel[i] + u[k]
            power[i] += max(1.0 / t[i], 0.01) * (np.sum(np.square(g[k])) - power[i])
            if t[i] <= boost_steps:
                power_reference[i] = power[i]
    return np.array(boosts), np.array(read)


def test_the_distance_boost_enlarges_the_steps_of_a_model_whose_minimum_is_far():
    """`distance_boost=d0` multiplies every tensor's step after step `distance_boost_steps`
    by 1 + (clip(d / d0, 1, cap) - 1) x (the decay in time), d the largest up to the decay's
    start of Prodigy's distance estimate pooled over
    the tensors (`pooled`, as the last step left the sums): checked against a NumPy
    reference from the gradients and updates. Where the minimum is far from the start
    (every coordinate 1 away, a weak curvature) the steps keep one direction and d grows
    past d0: the boost reaches its cap. Where the minimum is the start and a strong
    curvature holds the weights about it, d stays far below d0 and the steps are the
    unboosted net's, bit for bit."""
    gradients, taken, unboosted = distance_boost_run(minimum=1.0, curvature=1.0, steps=600)
    expected, _ = reference_boost(gradients, taken)
    for t, u, boost in zip(taken, unboosted, expected):
        np.testing.assert_allclose(t, boost[:, None, None] * u, rtol=1e-4, atol=1e-12)
    # One boost for the model; d is read up to step 300, where the decay in time starts; the
    # boost's excess then fades with it, to 300 / 600 of step 300's by the last step.
    np.testing.assert_array_equal(expected[0], expected[1])
    expected = expected[0]
    assert np.all(expected[:150] == 1.0) and expected[299] > 2.0, expected[299]
    np.testing.assert_allclose(expected[-1] - 1.0, (expected[299] - 1.0) * 300 / 600)

    gradients, taken, unboosted = distance_boost_run(minimum=0.0, curvature=1000.0)
    assert np.all(reference_boost(gradients, taken)[0] == 1.0)
    for t, u in zip(taken, unboosted):
        np.testing.assert_array_equal(t, u)

    net = networks.TensorwiseLSTM(layers=(6,), distance_boost=0.05)
    assert net.pooled_shape() == (3,) and len(net.initial_state((3,))) == len(
        networks.TensorwiseLSTM(layers=(6,)).initial_state((3,))) + 3
    with pytest.raises(ValueError, match="pass step\\(..., pooled=net.pooled\\(states\\)\\)"):
        net.step(net.initial_weights(), tf.ones([3]), net.initial_state((3,)))
    with pytest.raises(ValueError, match="distance_boost is the distance estimate"):
        networks.TensorwiseLSTM(layers=(6,), distance_boost=-1)
    with pytest.raises(ValueError, match="distance_boost_cap is the most"):
        networks.TensorwiseLSTM(layers=(6,), distance_boost=0.05, distance_boost_cap=0.5)
    with pytest.raises(ValueError, match="distance_boost_steps is the step after which"):
        networks.TensorwiseLSTM(layers=(6,), distance_boost=0.05, distance_boost_steps=0)
    with pytest.raises(ValueError, match="distance_boost_read_floor is the model's gradient"):
        networks.TensorwiseLSTM(layers=(6,), distance_boost=0.05, distance_boost_read_floor=1.0)
    with pytest.raises(ValueError, match="set distance_boost too"):
        networks.TensorwiseLSTM(layers=(6,), distance_boost_read_floor=0.7)


def test_the_distance_boost_stops_reading_while_the_gradients_grow_past_the_ceiling():
    """`distance_boost_read_ceiling=r1`: while the model's gradient RMS is above r1 of step
    `distance_boost_steps`'s, d is not read, and the boost stays at what d had set. Checked
    against the NumPy reference: on a quadratic whose minimum is far, made 3x steeper at
    step 200, the gradient power passes 2^2 of step 150's before step 300, and d,
    still growing, sets a smaller boost than without the ceiling. Before the gradients grow
    the steps are the same as without the ceiling, bit for bit."""
    run = functools.partial(distance_boost_run, minimum=1.0, curvature=1.0, steps=400,
                            steeper_from=200)
    gradients, taken, unboosted = run(read_ceiling=2.0)
    expected, read = reference_boost(gradients, taken, read_ceiling=2.0)
    for t, u, boost in zip(taken, unboosted, expected):
        np.testing.assert_allclose(t, boost[:, None, None] * u, rtol=1e-4, atol=1e-12)
    np.testing.assert_array_equal(read[0], read[1])
    expected, read = expected[0], read[0]
    free_gradients, free_taken, _ = run()
    without_ceiling, read_without_ceiling = (
        x[0] for x in reference_boost(free_gradients, free_taken))
    stop = np.argmin(read[1:]) + 1
    assert 200 < stop < 300 and not read[stop:].any() and read_without_ceiling[1:300].all()
    np.testing.assert_array_equal(taken[0][:stop], free_taken[0][:stop])
    assert expected[299] < without_ceiling[299] - 0.1 and expected[299] > 1.0
    with pytest.raises(ValueError, match="distance_boost_read_ceiling is the model's gradient"):
        networks.TensorwiseLSTM(layers=(6,), distance_boost=0.05, distance_boost_read_ceiling=1)
    with pytest.raises(ValueError, match="set distance_boost too, or distance_boost_read_c"):
        networks.TensorwiseLSTM(layers=(6,), distance_boost_read_ceiling=2.0)


def test_boost_distance_is_the_largest_estimate_read_up_to_the_decay_s_start():
    """`boost_distance(state)` is the largest of the pooled estimates `sum n / sum |s|_1` the
    steps read, as each found them, up to step `decay_steps`; later estimates, larger here
    (the gradients keep one sign), are not read."""
    net = networks.TensorwiseLSTM(layers=(6,), decay_steps=5, distance_boost=0.05)
    weights, state = net.initial_weights(), net.initial_state((4, 3))
    gradient = tf.constant(np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(4, 3))
    estimates = []
    for _ in range(9):
        reading = net.pooled([state])
        estimates.append(float(reading[0] / (reading[1] + 1e-30)))
        state = net.step(weights, gradient, state, reading)[1]
    assert estimates[-1] > max(estimates[:5]) > 0
    np.testing.assert_allclose(float(net.boost_distance(state)), max(estimates[:5]), rtol=1e-6)
    with pytest.raises(ValueError, match="distance_boost=0 does not keep"):
        networks.TensorwiseLSTM(layers=(6,)).boost_distance(state)


def test_the_distance_boost_stops_reading_once_the_gradients_fall_below_the_floor():
    """`distance_boost_read_floor=r0`: once the model's gradient RMS falls below r0 of step
    `distance_boost_steps`'s, as a model memorising a small training set has its gradients
    fall, d is no longer read, and the boost stays at what d had set. Checked against the
    NumPy reference: on a quadratic whose minimum is 0.3 away, with little noise, the
    gradient power falls below 0.8^2 of step 150's as the weights close on it, before step
    300 (the decay's start, where the read ends without the floor); d, still growing there,
    sets a smaller boost than it does without the floor."""
    gradients, taken, unboosted = distance_boost_run(minimum=0.3, curvature=1.0, steps=600,
                                                     read_floor=0.8, noise=0.1)
    expected, read = reference_boost(gradients, taken, read_floor=0.8)
    for t, u, boost in zip(taken, unboosted, expected):
        np.testing.assert_allclose(t, boost[:, None, None] * u, rtol=1e-4, atol=1e-12)
    np.testing.assert_array_equal(read[0], read[1])  # both tensors read d at the same steps
    expected, read = expected[0], read[0]
    without_floor, read_without_floor = (x[0] for x in reference_boost(gradients, taken))
    stop = np.argmin(read[1:]) + 1  # the first step is unread: no power reference yet
    assert 150 < stop < 300 and not read[stop:].any() and read_without_floor[:300].all()
    # Before the stop the boosts agree; after it, the floor's is below and fades alike.
    np.testing.assert_array_equal(expected[:stop], without_floor[:stop])
    assert expected[299] > 1.5 and expected[299] < without_floor[299] - 0.1
    np.testing.assert_allclose(expected[-1] - 1.0, (expected[299] - 1.0) * 300 / 600)


def test_a_restarted_tensor_reads_the_distance_again_instead_of_keeping_the_old_task_s():
    """Each tensor keeps the largest d it read itself: one that `restart_ratio` zeroes (a new
    task) reads d again from its own first step, and the old task's d boosts only the
    tensors that went on. Here the first tensor is held at its minimum throughout and the
    second travels to a far one, so that d, read over the model, passes d0 and both tensors'
    steps grow alike; at step 400 the second restarts on a task where it only jitters. d
    read after that stays below d0: its steps are the unboosted net's, bit for bit, where
    the model's largest d (the rule before session 60) would have boosted them 2x from its
    own step 150; the first's boost goes on fading as before. Checked against the NumPy
    reference, which restarts the tensor's sums and count."""
    gradients, taken, unboosted = distance_boost_run(
        minimum=(0.0, 1.0), curvature=(1000.0, 1.0), steps=800, new_task_of_the_second=400)
    expected, read = reference_boost(gradients, taken, restart=(400, 1))
    for t, u, boost in zip(taken, unboosted, expected):
        np.testing.assert_allclose(t, boost[:, None, None] * u, rtol=1e-4, atol=1e-12)
    np.testing.assert_array_equal(expected[0][:400], expected[1][:400])
    assert expected[0][299] > 1.8, expected[0][299]
    assert read[1][400:700].all() and not read[1][700:].any()
    np.testing.assert_array_equal(taken[1][400:], unboosted[1][400:])
    np.testing.assert_allclose(expected[0][400:] - 1.0,
                               (expected[0][299] - 1.0) * 300 / np.arange(401, 801))


@pytest.mark.parametrize("slack", [1.0, 1.5])
def test_the_latched_gradient_decay_holds_near_its_lowest_ratio_when_the_gradients_grow_back(
        slack):
    """With `gradient_decay_latch=k` the gradient decay reads min(r, k * lowest r so far): its
    step is the free decay's times (min(1, r, k * lowest) / min(1, r)) ** gradient_decay
    (here 2), so gradients that grow back (a burst, or a step too large for a model that has
    fit its data) enlarge the step by at most k ** 2. While r falls the two agree. Without
    the stop it keeps the same one float of state as the stop's latch, and with both latches
    the stop is unchanged."""
    _, weights = tensorwise_with_random_outputs()
    options = dict(layers=(6,), decay_steps=5, gradient_decay=2.0)
    free = networks.TensorwiseLSTM(**options)
    latched = networks.TensorwiseLSTM(**options, gradient_decay_latch=slack)
    assert latched.get_config()["gradient_decay_latch"] == slack
    assert len(latched.initial_state((5, 4))) == len(free.initial_state((5, 4))) + 1
    scales = [1.0] * 5 + [0.3] * 300 + [1.0] * 200
    ratios = {}
    for t, ratio, lowest, step_ratio in latched_step_ratios(weights, (latched, free), scales, 0):
        held = min(1.0, ratio, slack * lowest)
        ratios[t] = step_ratio
        np.testing.assert_allclose(step_ratio, (held / min(1.0, ratio)) ** 2, rtol=2e-3)
    assert np.all(ratios[305] > 0.9)  # level at about 0.3: only noise below the lowest
    # Grown back to r = 1 from about 0.3: held at the lowest, or at most `slack` above it.
    assert np.all(ratios[505] < 0.15 * slack ** 2)
    stop = dict(options, gradient_stop=0.3)
    both = networks.TensorwiseLSTM(**stop, gradient_stop_latch=True,
                                   gradient_decay_latch=slack)
    stop_only = networks.TensorwiseLSTM(**stop, gradient_stop_latch=True)
    assert len(both.initial_state((5, 4))) == len(stop_only.initial_state((5, 4)))
    for _, ratio, lowest, step_ratio in latched_step_ratios(weights, (both, stop_only),
                                                            scales, 1):
        held = min(1.0, ratio, slack * lowest)
        np.testing.assert_allclose(step_ratio, (held / min(1.0, ratio)) ** 2, rtol=2e-3)
    with pytest.raises(ValueError, match="set gradient_decay too"):
        networks.TensorwiseLSTM(layers=(6,), decay_steps=5, gradient_decay_latch=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        networks.TensorwiseLSTM(**options, gradient_decay_latch=0.9)
    with pytest.raises(ValueError, match="at least 1"):
        networks.TensorwiseLSTM(**options, gradient_decay_latch=0)


@pytest.mark.parametrize("threshold", [1.0, 1.4])
def test_the_burstiness_gate_keeps_the_step_of_a_tensor_whose_gradients_shrink_smoothly(
        threshold):
    """With `burstiness_gate=k` the gradient decay's exponent q becomes q * min(1, b / (s * b
    at step 5)) ** k, b the RMS of the step-to-step change in log mean squared gradient (an
    average with weight 0.99 from step 2, debiased), s `burstiness_threshold`: gradients
    that shrink smoothly after jumping about keep more of their step; once they jump about
    again, the full decay is back. A state without a reference (saved before the gate
    existed) keeps the full decay."""
    _, weights = tensorwise_with_random_outputs()
    options = dict(layers=(6,), decay_steps=5, gradient_decay=1.5)
    plain = networks.TensorwiseLSTM(**options)
    gated = networks.TensorwiseLSTM(**options, burstiness_gate=2.0,
                                    burstiness_threshold=threshold)
    assert (gated.get_config()["burstiness_gate"],
            gated.get_config()["burstiness_threshold"]) == (2.0, threshold)
    rng = np.random.default_rng(0)
    scales = [1.0, 3.0, 1.0, 3.0, 1.0, 0.5, 0.45, 0.4, 0.35, 0.02, 0.3, 0.02]
    states = {net: net.initial_state((5, 4)) for net in (plain, gated)}
    power = burst = 0.0
    log_power, factors = None, []
    for t, scale in enumerate(scales, start=1):
        # Gradients of 1e-2: a change counted at step 1, from the state's 0, would be large.
        gradient = (0.01 * scale * rng.normal(size=(5, 4))).astype(np.float32)
        mean_square = np.mean(np.square(gradient.astype(np.float64)))
        power = 0.99 * power + 0.01 * mean_square
        rms = np.sqrt(power / (1 - 0.99 ** t))
        if log_power is not None:
            burst = 0.99 * burst + 0.01 * (np.log(mean_square) - log_power) ** 2
        log_power = np.log(mean_square)
        spread = np.sqrt(burst / (1 - 0.99 ** max(t - 1, 1)))
        if t == 5:
            reference, spread_reference = rms, spread
        updates = {}
        for net in (plain, gated):
            updates[net], states[net] = net.step(weights, tf.constant(gradient), states[net])
        gate = 1.0 if t <= 5 else min(1.0, spread / (threshold * spread_reference)) ** 2.0
        shrink = 1.0 if t <= 5 else min(1.0, rms / reference)
        expected = shrink ** (1.5 * gate) / shrink ** 1.5
        np.testing.assert_allclose(updates[gated].numpy() / updates[plain].numpy(), expected,
                                   rtol=1e-3)
        factors.append(gate)
    assert factors[8] < 0.6 and factors[11] == 1.0  # smooth: gated; jumping again: not
    *rest, _ = states[gated]
    unreferenced = (*rest, tf.zeros([1]))
    gradient = tf.constant(0.01 * rng.normal(size=(5, 4)).astype(np.float32))
    np.testing.assert_allclose(gated.step(weights, gradient, unreferenced)[0].numpy(),
                               plain.step(weights, gradient, states[plain])[0].numpy(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="burstiness_gate must be at least 0"):
        networks.TensorwiseLSTM(**options, burstiness_gate=-1)
    with pytest.raises(ValueError, match="set gradient_decay too"):
        networks.TensorwiseLSTM(decay_steps=5, burstiness_gate=1)
    with pytest.raises(ValueError, match="burstiness_threshold must be above 0"):
        networks.TensorwiseLSTM(**options, burstiness_gate=1, burstiness_threshold=0)


def test_tensorwise_lstm_features_are_tensor_statistics():
    net = networks.TensorwiseLSTM()
    g = tf.constant([[1.0, -2.0], [3.0, 0.5]])
    features, _, _ = net.features(g, 0.1 * g, 0.001 * tf.square(g), tf.constant(1.0))
    features = features.numpy()[0]
    assert features.shape == (len(net.FEATURES),)
    np.testing.assert_allclose(features[2], 1.0, rtol=1e-6)  # momentum along the gradient
    np.testing.assert_allclose(features[0], 1.0, rtol=1e-3)  # |m_hat| / sqrt(v_hat) = 1
    np.testing.assert_allclose(features[4], np.log(2.0) / 10, rtol=1e-6)  # log(1 + t) / 10
    assert features[5] == -1.0  # a kernel; a vector would be +1
    np.testing.assert_allclose(features[6], np.log(2) / 5, rtol=1e-6)  # 2 inputs per unit
    conv = tf.ones([3, 3, 4, 8])
    conv_features, _, _ = net.features(conv, conv, conv, tf.constant(1.0))
    np.testing.assert_allclose(conv_features.numpy()[0][6], np.log(3 * 3 * 4) / 5, rtol=1e-6)
    bias = tf.ones([8])
    bias_features, _, _ = net.features(bias, bias, bias, tf.constant(1.0))
    assert bias_features.numpy()[0][5] == 1.0 and bias_features.numpy()[0][6] == 0.0
    flipped, _, _ = net.features(g, -0.1 * g, 0.001 * tf.square(g), tf.constant(1.0))
    np.testing.assert_allclose(flipped.numpy()[0][2], -1.0, rtol=1e-6)


def test_the_warm_up_phases_the_learned_correction_in_from_adam_s_step():
    """With `warmup_steps=4` the learned log step-size factor is scaled by t / 4: on the same
    gradients, the ratio of the step to Adam's is the unwarmed net's ratio to the power
    t / 4, and from step 4 on the steps are the unwarmed net's (the LSTM's state does not
    depend on the warm-up)."""
    _, weights = tensorwise_with_random_outputs()
    weights["linear"] = {field: value.copy() for field, value in weights["linear"].items()}
    weights["linear"]["w"][:, 1] = 0.0  # no gradient term: the step is factor x Adam's
    weights["linear"]["b"][1] = 0.0
    warm = networks.TensorwiseLSTM(layers=(6,), warmup_steps=4)
    assert warm.get_config()["warmup_steps"] == 4.0
    adam = networks.TensorwiseLSTM(layers=(6,))  # an untrained net is Adam
    rng = np.random.default_rng(0)
    full = networks.TensorwiseLSTM(layers=(6,))
    nets = {"full": (full, weights), "warm": (warm, weights), "adam": (adam, adam.initial_weights())}
    states = {name: n.initial_state((5, 4)) for name, (n, _) in nets.items()}
    for t in range(1, 7):
        gradient = tf.constant(rng.normal(size=(5, 4)).astype(np.float32))
        updates = {}
        for name, (n, w) in nets.items():
            updates[name], states[name] = n.step(w, gradient, states[name])
            updates[name] = updates[name].numpy()
        factor = updates["full"] / updates["adam"]
        assert np.all(np.abs(np.log(factor)) > 0.05)  # the learned factor is not 1
        np.testing.assert_allclose(updates["warm"] / updates["adam"],
                                   factor ** min(1.0, t / 4), rtol=1e-4)
    with pytest.raises(ValueError, match="warmup_steps must be at least 1"):
        networks.TensorwiseLSTM(warmup_steps=0.5)


def test_dead_unit_share_holds_every_factor_at_most_1_once_a_bias_stays_that_dead():
    """With the LSTM at its largest factor (30): a kernel's zeros are not read; a bias's
    share of zero gradients, averaged over about 10 steps (a NumPy reference), leaves the
    factors at 30 while it is below `dead_unit_share`, a single batch of zeros included;
    from the step after it reaches 0.9, every tensor's factor is 1 (Adam's step), read
    through `pooled`, and stays 1 when the zeros stop."""
    capped = networks.TensorwiseLSTM(layers=(6,), dead_unit_share=0.9)
    free = networks.TensorwiseLSTM(layers=(6,))
    weights = largest_factor_weights(free)
    rng = np.random.default_rng(0)
    shapes = ((4, 5), (20,))
    bias_zeros = [16] * 4 + [20] + [16] * 5 + [19] * 30 + [0] * 5
    states = {net: [net.initial_state(shape) for shape in shapes] for net in (capped, free)}
    steps = {net: tf.function(net.step) for net in (capped, free)}
    average = largest = 0.0
    factors = []
    for zeros in bias_zeros:
        factor = 1.0 if largest >= 0.9 else 30.0
        grads = [tf.constant(np.where(np.arange(np.prod(shape)).reshape(shape) < count, 0.0,
                                      rng.normal(size=shape)).astype(np.float32))
                 for shape, count in zip(shapes, (19, zeros))]  # the kernel 95% zeros
        adams = [steps[free](free.initial_weights(seed=0), g, s)[0]
                 for g, s in zip(grads, states[free])]
        states[free] = [steps[free](weights, g, s)[1] for g, s in zip(grads, states[free])]
        pooled = capped.pooled(states[capped])
        for i, (g, adam) in enumerate(zip(grads, adams)):
            update, states[capped][i] = steps[capped](weights, g, states[capped][i], pooled)
            np.testing.assert_allclose(update.numpy(), factor * adam.numpy(), rtol=1e-5)
        average = 0.9 * average + 0.1 * zeros / 20
        largest = max(largest, average)
        factors.append(factor)
    assert factors[:11] == [30.0] * 11 and factors[-6:] == [1.0] * 6
