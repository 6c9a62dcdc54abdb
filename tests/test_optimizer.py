import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import l2l_tf
from l2l_tf import meta, networks, presets, problems


def make_data(n=64, features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    return x, y


def sequential_model(seed=0, features=6):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(8, activation="sigmoid"),
        keras.layers.Dense(2),
    ])


def functional_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="sigmoid")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


class SubclassedModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="sigmoid")
        self.out = keras.layers.Dense(2)
        self.scalar = self.add_weight(shape=(), initializer="ones", name="scalar")

    def call(self, x):
        return self.out(self.hidden(x)) * self.scalar


def subclassed_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = SubclassedModel()
    model(np.zeros((1, 6), np.float32))
    return model


def embedding_model(seed=0):
    """Reads `make_data`'s six features as word ids (0-39) through an `Embedding`, whose
    gradient is sparse (`tf.IndexedSlices`): a batch of 16 holds some of its 40 rows."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Lambda(lambda x: keras.ops.cast(keras.ops.abs(x) * 13.0, "int32") % 40),
        keras.layers.Embedding(40, 3),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def trained_net_options():
    return presets.coordinatewise_net_options("paper", layers=(6, 6))


@pytest.mark.parametrize("make_model", [sequential_model, functional_model, subclassed_model])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_runs_and_changes_every_variable(make_model, jit_compile):
    x, y = make_data()
    model = make_model()
    before = [v.numpy().copy() for v in model.trainable_variables]
    opt = l2l_tf.LearnedOptimizer(seed=0)
    model.compile(optimizer=opt, loss=LOSS, jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for b, v in zip(before, model.trainable_variables):
        assert not np.array_equal(b, v.numpy()), v.path
    assert int(opt.iterations.numpy()) == 8
    assert len(opt.states) == len(model.trainable_variables)


def test_optimizers_with_the_same_net_share_one_compiled_update_and_its_traces():
    """A fresh `LearnedOptimizer` on a second model (a seed, a fold, a rate in a search)
    reuses the compiled update of the first: no new trace, so no new XLA compile, while
    each keeps its own state; a net with other options gets a function of its own, and so
    does a net of one's own that has no `get_config` (it still trains)."""
    x, y = make_data()
    first, second = l2l_tf.LearnedOptimizer(), l2l_tf.LearnedOptimizer(learning_rate=0.5)
    update = first._learned_updates["tensorwise"]
    assert second._learned_updates["tensorwise"] is update
    traces = []
    for seed, optimizer in enumerate((first, second)):
        model = sequential_model(seed=seed)
        model.compile(optimizer=optimizer, loss=LOSS)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        traces.append(update.experimental_get_tracing_count())
    assert traces[1] == traces[0] > 0
    assert int(first.iterations.numpy()) == int(second.iterations.numpy()) == 4
    assert not np.array_equal(first.states[0][1].numpy(), second.states[0][1].numpy())
    options = {**first.nets["tensorwise"].get_config(), "warmup_steps": None}
    other = l2l_tf.LearnedOptimizer(nets={"tensorwise": networks.TensorwiseLSTM(**options)})
    assert other._learned_updates["tensorwise"] is not update
    assert l2l_tf.LearnedOptimizer(jit_compile=False)._learned_updates["tensorwise"] is not update

    class Halving(networks.Net):  # a net of one's own, without get_config
        def step(self, weights, gradient, state):
            return -0.5 * gradient, state

    nets = [Halving(), Halving()]
    updates = [l2l_tf.LearnedOptimizer(nets={"halving": net})._learned_updates["halving"]
               for net in nets]
    assert updates[0] is not updates[1]
    assert l2l_tf.LearnedOptimizer(nets={"halving": nets[0]})._learned_updates["halving"] \
        is updates[0]
    model = sequential_model()
    model.compile(optimizer=l2l_tf.LearnedOptimizer(nets={"halving": nets[1]}), loss=LOSS)
    before = model.trainable_variables[0].numpy().copy()
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
    assert not np.array_equal(before, model.trainable_variables[0].numpy())


@pytest.mark.parametrize("restart_delay", [None, 100])
def test_a_restart_rule_that_never_fires_changes_no_bit_of_a_fit(restart_delay):
    """The default's net with a `restart_ratio` that no gradient reaches fits a model to the
    same bits as the default: the restart runs after the XLA-compiled step, which is the
    default's own (compiled in the same program, it drifted from the third step on). With
    `restart_delay` the compiled step also takes a longer pooled reading (the youngest
    tensor's step count beside the drift brake's and the distance boost's sums), which it
    does not read."""
    default = l2l_tf.LearnedOptimizer()
    net = default.nets["tensorwise"]
    never = type(net)(**{**net.get_config(), "restart_ratio": 1e6,
                         "restart_delay": restart_delay, "initializer": net.initializer})
    rng = np.random.default_rng(0)
    x = rng.random((128 * 8, 784), np.float32)
    y = rng.integers(0, 10, 128 * 8)
    with_rule = l2l_tf.LearnedOptimizer(nets={"tensorwise": never})
    assert with_rule._learned_updates["tensorwise"] is default._learned_updates["tensorwise"]
    weights = []
    for optimizer in (default, with_rule):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(20, activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile(optimizer=optimizer, loss=LOSS)
        model.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0)
        weights.append([v.numpy() for v in model.trainable_variables])
    for default_weight, with_rule_weight in zip(*weights):
        np.testing.assert_array_equal(with_rule_weight, default_weight)


def test_a_dense_layer_on_sequences_trains_through_a_partial_last_batch():
    """A Dense kernel applied to [batch, time, features] (every transformer block) gets a
    gradient of static shape [None, units] in the train step Keras traces for a partial last
    batch; the default net reads the kernel's fan-in from its shape and must still step it."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.Dense(5),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
    before = [v.numpy().copy() for v in model.trainable_variables]
    x = np.random.default_rng(0).normal(size=(10, 4, 3)).astype(np.float32)
    model.compile(optimizer=l2l_tf.LearnedOptimizer(), loss=LOSS)
    history = model.fit(x, (x[:, 0, 0] > 0).astype(np.int32), batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for b, v in zip(before, model.trainable_variables):
        assert not np.array_equal(b, v.numpy()), v.path


def dying_relu_model(seed=0):
    """A ReLU layer whose bias starts at -1: on `make_data`'s batches of 16, one of its 8
    units (0.125) is inactive on every example of the first two, and its bias's gradient is
    0 there: averaged over about 10 steps, a share of 0.024 after the second step, which a
    `dead_unit_share` of 0.02 reads before the third."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu",
                           bias_initializer=keras.initializers.Constant(-1.0)),
        keras.layers.Dense(2),
    ])


def conv_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Reshape((3, 2, 1)),
        keras.layers.Conv2D(3, (2, 2), activation="sigmoid"),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])


def tensorwise_net(drift_brake_scope="tensor", distance_boost=0.0, read_floor=0.0,
                   restart_delay=None, dead_unit_share=None):
    """A TensorwiseLSTM whose output layer is not zero, so that it is not plain Adam, with a
    warm-up and decays (with the gradient from step 3, gated by its burstiness and stopped
    below a ratio of 0.9, both latched, in time from step 4, a restart where the gradients
    grow past the reference (each tensor on its own, or with `restart_delay` the first
    ones and the others that many steps later), a drift brake from step 3, reading each
    tensor's drift or the one pooled over the net's tensors, and with `distance_boost` a
    boost from step 2, whose estimate is read only while the gradient RMS is `read_floor` of
    step 1's or more) short enough to act within a test's four steps (the default has all of
    them but the boost, later), and with `dead_unit_share` the cap on every factor once a
    bias's gradient has had that share of zeros."""
    net = networks.TensorwiseLSTM(layers=(5,))
    weights = networks.weights_to_numpy(net.initial_weights(seed=1))
    weights["linear"]["w"] = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    return networks.TensorwiseLSTM(layers=(5,), warmup_steps=3, decay_steps=3,
                                   gradient_decay=1.0, gradient_decay_steps=2, burstiness_gate=4.0,
                                   gradient_stop=0.9, gradient_stop_exponent=4.0,
                                   gradient_stop_latch=True, gradient_decay_latch=1.2,
                                   restart_ratio=1.01, restart_delay=restart_delay,
                                   drift_brake=2.0, drift_brake_steps=2,
                                   drift_brake_scope=drift_brake_scope,
                                   distance_boost=distance_boost, distance_boost_steps=1,
                                   distance_boost_read_floor=read_floor,
                                   dead_unit_share=dead_unit_share, initializer=weights)


# Every net class, each with the model it can update (`nets`, `net_assignments`).
EVERY_NET = {
    "CoordinateWiseDeepLSTM": (sequential_model, lambda: (
        {"cw": networks.CoordinateWiseDeepLSTM(**trained_net_options())}, None)),
    "TensorwiseLSTM": (sequential_model, lambda: ({"tw": tensorwise_net()}, None)),
    "TensorwiseLSTM, drift brake pooled": (sequential_model, lambda: (
        {"tw": tensorwise_net(drift_brake_scope="net")}, None)),
    "TensorwiseLSTM, drift brake pooled, distance boost with a read floor": (
        sequential_model, lambda: ({"tw": tensorwise_net(
            drift_brake_scope="net", distance_boost=1e-4, read_floor=0.9)}, None)),
    "TensorwiseLSTM, restart, drift brake and distance boost pooled": (
        sequential_model, lambda: ({"tw": tensorwise_net(
            drift_brake_scope="net", distance_boost=1e-4, restart_delay=1)}, None)),
    "TensorwiseLSTM on dying ReLU units, restart, dead-unit cap, drift brake and distance "
    "boost pooled": (dying_relu_model, lambda: ({"tw": tensorwise_net(
        drift_brake_scope="net", distance_boost=1e-4, restart_delay=1,
        dead_unit_share=0.02)}, None)),
    "TensorwiseLSTM, distance boost": (sequential_model, lambda: (
        {"tw": tensorwise_net(distance_boost=1e-4)}, None)),
    "TensorwiseLSTM on an Embedding, lazy rows, drift brake and distance boost pooled": (
        embedding_model, lambda: ({"tw": tensorwise_net(
            drift_brake_scope="net", distance_boost=1e-4)}, None)),
    "CoordinateWiseDeepLSTM on an Embedding": (embedding_model, lambda: (
        {"cw": networks.CoordinateWiseDeepLSTM(**trained_net_options())}, None)),
    "KernelDeepLSTM and StandardDeepLSTM": (conv_model, lambda: (
        {"kernel": networks.KernelDeepLSTM((2, 2), layers=(4,)),
         "rows": networks.StandardDeepLSTM(2, layers=(3,)),
         "cw": networks.CoordinateWiseDeepLSTM(layers=(4,))},
        [("kernel", ["conv2d.*kernel"]), ("rows", ["dense.*kernel"]), ("cw", [".*"])])),
    "Sgd": (sequential_model, lambda: ({"sgd": networks.Sgd(0.1)}, None)),
    "Adam": (sequential_model, lambda: ({"adam": networks.Adam(0.01)}, None)),
    "RMSprop": (sequential_model, lambda: ({"rmsprop": networks.RMSprop(0.01)}, None)),
    "Nag": (sequential_model, lambda: ({"nag": networks.Nag(0.1)}, None)),
}


def keras_step(opt, model, x, y, step):
    """`opt` steps `model` on the step-th batch of 16; returns the gradients it was given."""
    batch = slice(16 * step, 16 * (step + 1))
    with tf.GradientTape() as tape:
        loss = LOSS(y[batch], model(x[batch]))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return grads


@pytest.mark.parametrize("net_name", list(EVERY_NET))
@pytest.mark.parametrize("jit_compile", [False, True])
def test_keras_path_equals_pure_step_over_several_steps(net_name, jit_compile):
    """Same net weights, same gradients: update_step and networks' step agree, for every net.

    Without XLA to float32 rounding; XLA's own sigmoid, tanh and exp differ from TensorFlow's
    kernels by ~1e-6 relative, which four LSTM steps grow to ~1e-5.
    """
    make_model, make_nets = EVERY_NET[net_name]
    tolerance = {"rtol": 5e-5, "atol": 1e-6} if jit_compile else {"rtol": 1e-6, "atol": 1e-7}
    x, y = make_data()
    model = make_model()
    nets, assignments = make_nets()
    opt = l2l_tf.LearnedOptimizer(nets=nets, net_assignments=assignments, seed=5,
                                  learning_rate=0.7, jit_compile=jit_compile)
    weights = opt.net_weight_values()
    checked = networks.check_assignments(nets, assignments)
    variable_nets = [networks.net_for(v.path, nets, checked) for v in model.trainable_variables]
    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    states = [nets[n].initial_state(v.shape)
              for n, v in zip(variable_nets, model.trainable_variables)]
    for step in range(4):
        grads = keras_step(opt, model, x, y, step)
        pooled = {n: None if net.pooled_shape() is None else net.pooled(
            [s for s, m in zip(states, variable_nets) if m == n]) for n, net in nets.items()}
        for i, (g, n) in enumerate(zip(grads, variable_nets)):
            g, held = networks.dense_gradient(nets[n], g, params[i].shape)
            update, states[i] = networks.call_step(nets[n], weights[n], g, states[i], pooled[n],
                                                    held)
            params[i] = params[i] + 0.7 * update
        for p, v in zip(params, model.trainable_variables):
            np.testing.assert_allclose(v.numpy(), p.numpy(), **tolerance)
        for want, got in zip(states, opt.states):
            for s, slot in zip(want, got):
                np.testing.assert_allclose(slot.numpy(), s.numpy(), **tolerance)


@pytest.mark.parametrize("net_name", list(EVERY_NET))
def test_the_meta_trainer_steps_a_model_as_keras_does(net_name):
    """Same net weights, same gradients, a model of several variables: the meta-trainer's
    updates (`MetaLoss.updates`, which steps an elementwise net's parameters as one flat
    vector and every other net's one by one) are `LearnedOptimizer`'s, for every net. A net
    whose step is not elementwise but is flattened would see other statistics here than in
    Keras (session 11: `TensorwiseLSTM` was, until then)."""
    make_model, make_nets = EVERY_NET[net_name]
    x, y = make_data()
    model = make_model()
    nets, assignments = make_nets()
    opt = l2l_tf.LearnedOptimizer(nets=nets, net_assignments=assignments, seed=5)
    weights = tf.nest.map_structure(tf.constant, opt.net_weight_values())
    problem = problems.keras_model(model, x, y, LOSS)
    run = meta.MetaOptimizer(**nets).meta_loss(problem, 4, net_assignments=assignments)
    states = tf.nest.map_structure(tf.convert_to_tensor, run.states)
    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    for step in range(4):
        grads = keras_step(opt, model, x, y, step)
        updates, states = run.updates(weights, grads, states)
        params = [p + u for p, u in zip(params, updates)]
        for p, v in zip(params, model.trainable_variables):
            np.testing.assert_allclose(v.numpy(), p.numpy(), rtol=1e-5, atol=1e-7)


def test_a_learning_rate_schedule_scales_each_step_and_survives_saving(tmp_path):
    """The factor on the net's update at step t is schedule(t), as for Keras's optimizers."""
    x, y = make_data()
    model = sequential_model()
    net = networks.CoordinateWiseDeepLSTM(**trained_net_options())
    schedule = keras.optimizers.schedules.CosineDecay(0.8, decay_steps=3)
    opt = l2l_tf.LearnedOptimizer(nets={"cw": net}, seed=5, learning_rate=schedule)
    weights = opt.net_weight_values()["cw"]
    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    states = [net.initial_state(v.shape) for v in model.trainable_variables]
    for step in range(4):  # the last step's factor is 0: nothing moves
        batch = slice(16 * step, 16 * (step + 1))
        with tf.GradientTape() as tape:
            loss = LOSS(y[batch], model(x[batch]))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        factor = float(schedule(step))
        for i, g in enumerate(grads):
            update, states[i] = net.step(weights, g, states[i])
            params[i] = params[i] + factor * update
        for p, v in zip(params, model.trainable_variables):
            np.testing.assert_allclose(v.numpy(), p.numpy(), rtol=1e-6, atol=1e-7)
    model.compile(optimizer=opt, loss=LOSS)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path).optimizer
    assert isinstance(loaded._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert loaded._learning_rate.get_config() == schedule.get_config()
    assert int(loaded.iterations.numpy()) == 4


def test_reduce_lr_on_plateau_lowers_the_default_s_factor():
    """The README's advice for small data sets: Keras's `ReduceLROnPlateau` on the validation
    loss lowers `learning_rate`, the factor on the net's update, as it does Adam's rate.
    With `min_delta` too large for any epoch to count as an improvement after the first,
    every later epoch multiplies the factor by 0.3."""
    x, y = make_data()
    model = sequential_model()
    opt = l2l_tf.LearnedOptimizer()
    model.compile(optimizer=opt, loss=LOSS)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1,
                                                min_delta=1e9)
    history = model.fit(x[:48], y[:48], validation_data=(x[48:], y[48:]), batch_size=16,
                        epochs=3, verbose=0, callbacks=[plateau])
    np.testing.assert_allclose(history.history["learning_rate"], [1.0, 1.0, 0.3], rtol=1e-6)
    np.testing.assert_allclose(float(opt.learning_rate.numpy()), 0.09, rtol=1e-6)


def test_a_whole_number_factor_is_a_float_factor_and_a_bool_is_refused():
    """`LearnedOptimizer(learning_rate=3)`, as the README writes it, steps as `3.0` does
    (Keras's base class refuses an `int`) and saves as 3.0; `True` stays an error."""
    x, y = make_data()
    values = []
    for factor in (3, 3.0):
        model = sequential_model()
        opt = l2l_tf.LearnedOptimizer(learning_rate=factor)
        model.compile(optimizer=opt, loss=LOSS)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        assert opt.get_config()["learning_rate"] == 3.0
        values.append([v.numpy() for v in model.trainable_variables])
    moved = [np.abs(a - b).max() for a, b in zip(values[0],
                                                 [v.numpy() for v in sequential_model().weights])]
    assert min(moved) > 0
    for whole, fractional in zip(*values):
        np.testing.assert_array_equal(whole, fractional)
    with pytest.raises(ValueError, match="learning_rate"):
        l2l_tf.LearnedOptimizer(learning_rate=True)


def test_a_factor_that_looks_like_adam_s_rate_warns_but_a_restored_one_does_not(tmp_path):
    """`LearnedOptimizer(learning_rate=1e-3)`, Adam's habit, steps a thousand times slower
    than trained: it warns and names the factor of Adam's pace. So does a schedule that
    starts there. Factors of 0.002 and up, and a small factor restored by `load_model`
    (where `ReduceLROnPlateau` may have left it), do not warn."""
    from l2l_tf.optimizer import SmallFactorWarning
    with pytest.warns(SmallFactorWarning, match=r"learning_rate=0\.29"):
        l2l_tf.LearnedOptimizer(learning_rate=1e-3)
    with pytest.warns(SmallFactorWarning, match=r"10,000x smaller"):
        l2l_tf.LearnedOptimizer(
            learning_rate=keras.optimizers.schedules.CosineDecay(1e-4, decay_steps=10))
    x, y = make_data()
    model = sequential_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallFactorWarning)
        for factor in (0.002, 0.3, 3):
            l2l_tf.LearnedOptimizer(learning_rate=factor)
        opt = l2l_tf.LearnedOptimizer(learning_rate=0.01)
        model.compile(optimizer=opt, loss=LOSS)
        model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
        opt.learning_rate = 1e-4  # as ReduceLROnPlateau sets it
        path = str(tmp_path / "m.keras")
        model.save(path)
        loaded = keras.models.load_model(path).optimizer
    np.testing.assert_allclose(float(loaded.learning_rate.numpy()), 1e-4, rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_weight_decay_is_adamw_s_at_the_nets_nominal_rate(jit_compile):
    """Keras's decay multiplies by `learning_rate`, a factor of ~1 here: a thousand times
    AdamW's. An untrained `TensorwiseLSTM` is Keras's Adam, so with `weight_decay` it must
    be AdamW, with the factor and the variables excluded from the decay."""
    x, y = make_data()
    models = [sequential_model(), sequential_model()]
    ours = l2l_tf.LearnedOptimizer(nets={"adam": networks.TensorwiseLSTM(learning_rate=0.01)},
                                   learning_rate=0.5, weight_decay=20.0, jit_compile=jit_compile)
    adamw = keras.optimizers.AdamW(0.005, weight_decay=20.0, epsilon=1e-7)
    for opt in (ours, adamw):
        opt.exclude_from_weight_decay(var_names=["bias"])
    start = [v.numpy() for v in models[0].trainable_variables]
    for step in range(4):
        batch = slice(16 * step, 16 * (step + 1))
        for model, opt in zip(models, (ours, adamw)):
            with tf.GradientTape() as tape:
                loss = LOSS(y[batch], model(x[batch]))
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
    for a, b, s in zip(models[0].trainable_variables, models[1].trainable_variables, start):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
        if "kernel" in a.path:  # shrunk by 1 - 0.1 a step: the decay was applied, once
            assert np.linalg.norm(a.numpy()) < 0.8 * np.linalg.norm(s)


@pytest.mark.parametrize("decayed_travel", [True, False])
def test_the_distance_boost_s_travel_counts_the_weight_decay_only_when_told(decayed_travel):
    """With `distance_boost_decayed_travel`, T (the travel the distance estimate reads) is
    each variable's displacement from its first value, in the units of the net's update
    (before `learning_rate`), the weight decay's pull included; without it, T is the sum of
    the net's updates alone and leaves out what the decay took."""
    x, y = make_data()
    model = sequential_model()
    net = networks.TensorwiseLSTM(learning_rate=0.01, distance_boost=1e-4,
                                  distance_boost_decayed_travel=decayed_travel)
    opt = l2l_tf.LearnedOptimizer(nets={"tw": net}, learning_rate=0.5, weight_decay=20.0)
    start = [v.numpy() for v in model.trainable_variables]
    for step in range(4):
        keras_step(opt, model, x, y, step)
    for variable, first, state in zip(model.trainable_variables, start, opt.states):
        travel = state[-3].numpy()  # (T, s, sums) close a boosted net's state
        displacement = (variable.numpy() - first) / 0.5
        if decayed_travel:
            np.testing.assert_allclose(travel, displacement, rtol=1e-4, atol=1e-6)
        elif "kernel" in variable.path:  # decayed: a kernel's T is not its displacement
            assert np.abs(travel - displacement).max() > 1e-3


def test_the_decayed_travel_needs_the_distance_boost():
    with pytest.raises(ValueError, match="distance_boost_decayed_travel acts on the distance"):
        networks.TensorwiseLSTM(distance_boost_decayed_travel=True)


def test_weight_decay_needs_a_net_with_a_nominal_step_size():
    with pytest.raises(ValueError, match="weight_decay needs a nominal step size"):
        l2l_tf.LearnedOptimizer.from_pretrained("mnist", weight_decay=0.004)
    assert l2l_tf.LearnedOptimizer.from_pretrained("mnist").weight_decay is None


def test_another_keras_backend_is_refused_where_the_optimizer_is_made(monkeypatch):
    # jax and torch are not installed here (Keras's numpy backend imports jax too), so the
    # backend Keras reports is faked: the check must read it when the optimizer is made.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError,
                       match="using 'jax'. Set the environment variable KERAS_BACKEND=tensorflow"):
        l2l_tf.LearnedOptimizer()
    monkeypatch.undo()
    assert l2l_tf.LearnedOptimizer().nets


def assert_same_optimizer_values(a, b):
    named_a, named_b = a._named_variables(), b._named_variables()
    assert sorted(named_a) == sorted(named_b)
    for key in named_a:
        np.testing.assert_array_equal(named_a[key].numpy(), named_b[key].numpy(), err_msg=key)


def test_model_save_and_load_round_trip_weights_and_states_exactly(tmp_path):
    x, y = make_data()
    model = sequential_model()
    model.compile(optimizer=l2l_tf.LearnedOptimizer(seed=3), loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, l2l_tf.LearnedOptimizer)
    assert_same_optimizer_values(model.optimizer, loaded.optimizer)
    # Training on from the loaded model continues exactly where the original left off.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_saving_before_the_optimizer_is_built_keeps_the_net_weights(tmp_path):
    model = sequential_model()
    opt = l2l_tf.LearnedOptimizer(seed=11)
    model.compile(optimizer=opt, loss=LOSS)
    path = str(tmp_path / "m.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save(path)
        loaded = keras.models.load_model(path)
    messages = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert messages == []
    for a, b in zip(tf.nest.flatten(opt.net_weight_values()),
                    tf.nest.flatten(loaded.optimizer.net_weight_values())):
        np.testing.assert_array_equal(a, b)


def test_get_config_from_config_round_trips_net_weights():
    opt = l2l_tf.LearnedOptimizer(
        nets={"cw": {"net": "CoordinateWiseDeepLSTM", "net_options": trained_net_options()},
              "fixed": networks.Adam(learning_rate=0.01)},
        net_assignments=[("fixed", ["bias"]), ("cw", [".*"])],
        seed=2, learning_rate=0.5, clipnorm=1.0,
    )
    for v in opt.net_weights["cw"]["lstm_0"].values():
        v.assign(v + 0.123)
    config = opt.get_config()
    clone = l2l_tf.LearnedOptimizer.from_config(config)
    assert clone.get_config() == config
    assert clone.net_assignments == opt.net_assignments
    for a, b in zip(tf.nest.flatten(opt.net_weight_values()), tf.nest.flatten(clone.net_weight_values())):
        np.testing.assert_array_equal(a, b)
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config


def test_net_assignments_route_variables_to_their_nets():
    x, y = make_data()
    model = sequential_model()
    opt = l2l_tf.LearnedOptimizer(
        nets={"cw": {"net": "CoordinateWiseDeepLSTM", "net_options": trained_net_options()},
              "sgd": networks.Sgd(learning_rate=0.1)},
        net_assignments=[("sgd", ["bias"]), ("cw", ["kernel"])],
    )
    model.compile(optimizer=opt, loss=LOSS)
    bias = model.layers[0].bias
    before = bias.numpy().copy()
    with tf.GradientTape() as tape:
        loss = LOSS(y[:16], model(x[:16]))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    np.testing.assert_allclose(bias.numpy(), before - 0.1 * grads[1].numpy(), rtol=1e-6)
    assert opt.variable_nets == ["cw", "sgd", "cw", "sgd"]
    assert [len(s) for s in opt.states] == [4, 0, 4, 0]


def test_unassigned_variable_and_bad_assignments_fail_clearly():
    model = sequential_model()
    opt = l2l_tf.LearnedOptimizer(nets={"a": networks.Sgd(), "b": networks.Sgd()},
                                  net_assignments=[("a", ["kernel"])])
    with pytest.raises(ValueError, match=r"dense_\d+/bias. matches no pattern"):
        opt.build(model.trainable_variables)
    with pytest.raises(ValueError, match="need net_assignments"):
        l2l_tf.LearnedOptimizer(nets={"a": networks.Sgd(), "b": networks.Sgd()})
    with pytest.raises(ValueError, match="names net 'c'"):
        l2l_tf.LearnedOptimizer(nets={"a": networks.Sgd()}, net_assignments=[("c", [".*"])])
    with pytest.raises(ValueError, match="must be a networks.Net"):
        l2l_tf.LearnedOptimizer(nets={"a": "Sgd"})


def test_from_pretrained_loads_a_saved_net_file_and_directory(tmp_path):
    opt = l2l_tf.LearnedOptimizer(nets={"mine": {"net": "CoordinateWiseDeepLSTM",
                                                 "net_options": trained_net_options()}}, seed=9)
    opt.save_nets(str(tmp_path))
    from_dir = l2l_tf.LearnedOptimizer.from_pretrained(str(tmp_path))
    from_file = l2l_tf.LearnedOptimizer.from_pretrained(str(tmp_path / "mine.npz"))
    for other in (from_dir, from_file):
        assert list(other.nets) == ["mine"]
        assert other.nets["mine"].get_config() == opt.nets["mine"].get_config()
        for a, b in zip(tf.nest.flatten(opt.net_weight_values()), tf.nest.flatten(other.net_weight_values())):
            np.testing.assert_array_equal(a, b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No net files"):
        l2l_tf.LearnedOptimizer.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="No net weights file"):
        l2l_tf.LearnedOptimizer.from_pretrained(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "float16", "bfloat16"])
def test_low_precision_variables_and_policies(policy):
    x, y = make_data()
    keras.config.set_dtype_policy(policy)
    try:
        model = sequential_model()
        model.compile(optimizer=l2l_tf.LearnedOptimizer(seed=0), loss=LOSS)
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    opt = model.optimizer
    opt = getattr(opt, "inner_optimizer", opt)
    assert all(s.dtype == "float32" for state in opt.states for s in state)
    assert all(np.all(np.isfinite(v.numpy().astype(np.float32))) for v in model.trainable_variables)


@pytest.mark.parametrize("name", ["mnist-wide", "mnist-keras"])
def test_scalar_variable_embedding_sparse_gradients_and_variables_without_gradient(name):
    keras.utils.set_random_seed(0)
    tokens = keras.Input((3,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4)(tokens)
    logits = keras.layers.Dense(2)(keras.layers.Flatten()(embedded))
    model = keras.Model(tokens, logits)
    unused = keras.layers.Dense(3)
    unused.build((None, 2))
    scalar = keras.Variable(1.5, name="scalar")
    variables = model.trainable_variables + unused.trainable_variables + [scalar]
    opt = l2l_tf.LearnedOptimizer.from_pretrained(name)
    x = np.array([[1, 2, 2], [3, 1, 1]], np.int32)
    with tf.GradientTape() as tape:
        loss = LOSS(np.array([0, 1]), model(x)) + tf.square(scalar.value)
    grads = tape.gradient(loss, variables)
    assert isinstance(grads[0], tf.IndexedSlices)
    assert grads[3] is None and grads[4] is None
    before = [v.numpy().copy() for v in variables]
    opt.build(variables)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns about the variables with no gradient.
        opt.apply_gradients(zip(grads, variables))
    assert not np.array_equal(before[0], variables[0].numpy())
    assert not np.array_equal(before[-1], variables[-1].numpy())
    np.testing.assert_array_equal(before[3], variables[3].numpy())
    assert np.all(opt.states[3][0].numpy() == 0) and np.any(opt.states[0][0].numpy() != 0)
    if name == "mnist-wide":  # coordinatewise: (h, c) per layer, a row per coordinate
        assert opt.states[0][0].shape == (40, 20)
        assert opt.states[-1][0].shape == (1, 20)
    else:  # tensorwise: Adam's m and v of the variable's shape first
        assert opt.states[0][0].shape == (10, 4)
        assert opt.states[-1][0].shape == ()


@pytest.mark.parametrize("lazy", [True, False])
def test_the_default_moves_only_the_embedding_rows_a_batch_holds(lazy):
    """Two batches of word ids, rows {1, 2, 3} then {5, 6}: the default (lazy rows) moves
    each batch's rows only, and its travel and displacement (the boost's and the brake's
    statistics) stay zero on rows no batch held. A net without lazy rows (Adam, as Keras's)
    moves step 1's rows again at step 2 on their momentum. Held at step 1 only, a row's travel
    keeps step 1's value and its displacement decays as the brake's average does."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((3,), dtype="int32")
    model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.Flatten()(
        keras.layers.Embedding(10, 4)(tokens))))
    opt = (l2l_tf.LearnedOptimizer() if lazy
           else l2l_tf.LearnedOptimizer(nets={"adam": networks.Adam(0.01)}))
    embedding = model.trainable_variables[0]
    rows, statistics = [embedding.numpy().copy()], []
    for x in ([[1, 2, 2], [3, 1, 1]], [[5, 6, 5], [6, 6, 5]]):
        with tf.GradientTape() as tape:
            loss = LOSS(np.array([0, 1]), model(np.array(x, np.int32)))
        grads = tape.gradient(loss, model.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        rows.append(embedding.numpy().copy())
        if lazy:  # the default's state closes with (D, s), then (T, s, sums)
            statistics.append((opt.states[0][-3].numpy(), opt.states[0][-5].numpy()))
    moved = [np.any(after != before, axis=1) for before, after in zip(rows, rows[1:])]
    assert moved[0].tolist() == [r in (1, 2, 3) for r in range(10)]
    if lazy:
        assert moved[1].tolist() == [r in (5, 6) for r in range(10)]
        (travel_1, displacement_1), (travel, displacement) = statistics
        for statistic in (travel, displacement):
            assert np.all(statistic[[0, 4, 7, 8, 9]] == 0) and np.all(statistic[[1, 5]] != 0)
        np.testing.assert_array_equal(travel[1:4], travel_1[1:4])
        np.testing.assert_allclose(displacement[1:4],
                                   networks.TensorwiseLSTM.DRIFT_DECAY * displacement_1[1:4],
                                   rtol=1e-6)
    else:
        assert moved[1].tolist() == [r in (1, 2, 3, 5, 6) for r in range(10)]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_never_reach_variables(bad):
    model = sequential_model()
    opt = l2l_tf.LearnedOptimizer(seed=0)
    opt.build(model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    grads = [tf.ones_like(v) * 0.1 for v in model.trainable_variables]
    grads[0] = tf.tensor_scatter_nd_update(grads[0], [[0, 0]], [bad])
    opt.apply_gradients(zip(grads, model.trainable_variables))
    np.testing.assert_array_equal(model.trainable_variables[0].numpy(), before[0])
    assert np.all(opt.states[0][0].numpy() == 0)
    assert not np.array_equal(model.trainable_variables[1].numpy(), before[1])
    for v in model.trainable_variables:
        assert np.all(np.isfinite(v.numpy()))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_skips_a_non_finite_batch_in_compiled_steps(jit_compile):
    """The skip inside `model.fit`'s traced (and XLA-compiled) train step, not only eagerly."""
    model = sequential_model()
    opt = l2l_tf.LearnedOptimizer(seed=0)
    model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # builds, and moves every state
    before = [v.numpy().copy() for v in model.trainable_variables + opt.variables]
    x_bad = x.copy()
    x_bad[0, 0] = np.nan  # every gradient of this batch is NaN
    model.fit(x_bad, y, batch_size=8, epochs=1, verbose=0)
    after = [v.numpy() for v in model.trainable_variables + opt.variables]
    changed = [v for v, b, a in zip(model.trainable_variables + opt.variables, before, after)
               if not np.array_equal(b, a, equal_nan=True)]
    # Only the step counter moved, and the default's pooled drift reading, which `apply`
    # reads anew before every step from the states: the same states, so the reading of them.
    assert [v.path for v in changed] == [opt.iterations.path,
                                         opt.pooled_readings["tensorwise"].path]
    np.testing.assert_array_equal(
        opt.pooled_readings["tensorwise"].numpy(),
        opt.nets["tensorwise"].pooled([[tf.convert_to_tensor(s) for s in state]
                                       for state in opt.states]))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(model.trainable_variables[0].numpy(), before[0])


def test_huge_gradients_and_overflowing_updates_are_finite_or_skipped():
    variable = keras.Variable(np.full((3,), 60000.0, np.float16), dtype="float16")
    opt = l2l_tf.LearnedOptimizer(nets={"sgd": networks.Sgd(learning_rate=1.0)})
    opt.apply_gradients([(tf.constant([-1e4, 1.0, 2.0], tf.float16), variable)])
    # 60000 + 1e4 overflows float16: the step is skipped rather than writing Inf.
    np.testing.assert_array_equal(variable.numpy(), [60000.0] * 3)
    huge = tf.constant([1e30, -1e30, 3e38, 1e-30])
    # The paper's LSTM sees log|g| (LogAndSign), so it still moves.
    lstm = l2l_tf.LearnedOptimizer.from_pretrained("mnist-wide")
    v32 = keras.Variable(np.zeros(4, np.float32))
    lstm.apply_gradients([(huge, v32)])
    assert np.all(np.isfinite(v32.numpy())) and np.any(v32.numpy() != 0)
    # The default keeps Adam's second moment, g^2 = Inf here: its step is skipped, state and all.
    default = l2l_tf.LearnedOptimizer()
    v32 = keras.Variable(np.ones(4, np.float32))
    default.apply_gradients([(huge, v32)])
    np.testing.assert_array_equal(v32.numpy(), np.ones(4))
    assert all(np.all(s.numpy() == 0) for s in default.states[0])
    default.apply_gradients([(tf.constant([1.0, -1.0, 2.0, 0.5]), v32)])
    assert np.all(np.isfinite(v32.numpy())) and np.all(v32.numpy() != 1.0)
