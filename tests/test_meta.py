import keras
import numpy as np
import pytest
import tensorflow as tf

import l2l_tf
from l2l_tf import meta, networks, problems


def linear_zero_net():
    """The original test's net: no hidden layers, zero init, no preprocessing, scale 1."""
    return networks.CoordinateWiseDeepLSTM(layers=(), initializer="zeros")


def test_regression_target_of_the_original():
    optimizer = meta.MetaOptimizer(net=linear_zero_net())
    run = optimizer.meta_minimize(problems.simple(), 5, learning_rate=0.01)
    run.reset()
    _, losses = run.step()
    np.testing.assert_allclose(losses.numpy(), 1.0)  # zero net: x stays 1 in the first unroll
    linear = optimizer.weights["net"]["linear"]
    np.testing.assert_allclose([linear["w"].numpy()[0, 0], linear["b"].numpy()[0]], -0.01, atol=1e-6)
    _, losses = run.step()
    np.testing.assert_allclose(losses[-1].numpy(), 0.7325327, atol=1e-4)
    np.testing.assert_allclose(run.x[0].numpy(), 0.8559, atol=1e-4)


def test_meta_loss_sums_steps_one_to_t_with_weights():
    optimizer = meta.MetaOptimizer(net=networks.CoordinateWiseDeepLSTM(
        layers=(), initializer={"w": [[-0.1]], "b": [0.0]}))
    run = optimizer.meta_loss(problems.simple(), 3, loss_weights=[1.0, 0.0, 2.0])
    meta_loss, losses = run.unroll()
    x = [1.0]
    for _ in range(3):
        x.append(x[-1] - 0.1 * 2 * x[-1])
    np.testing.assert_allclose(losses.numpy(), np.square(x), rtol=1e-6)
    np.testing.assert_allclose(meta_loss.numpy(), x[1] ** 2 + 2 * x[3] ** 2, rtol=1e-6)


def test_unrolls_carry_parameters_and_reset_resamples():
    optimizer = meta.MetaOptimizer(seed=0)
    run = optimizer.meta_loss(problems.quadratic(batch_size=4, num_dims=3), 5, seed=7)
    w0 = run.constants[0]["w"].numpy()
    _, first = run.unroll()
    _, second = run.unroll()
    # The second unroll starts where the first ended (same constants, same parameters).
    np.testing.assert_allclose(second[0].numpy(), first[-1].numpy(), rtol=1e-6)
    assert np.any(run.states["coordinatewise"][0].numpy() != 0)
    run.reset()
    assert not np.array_equal(run.constants[0]["w"].numpy(), w0)
    assert all(np.all(s.numpy() == 0) for s in run.states["coordinatewise"])


def meta_gradient_of_one_unroll(second_derivatives):
    """Read from the change an SGD(lr=1) meta-step makes: w_before - w_after."""
    optimizer = meta.MetaOptimizer(net=networks.CoordinateWiseDeepLSTM(
        layers=(), initializer={"w": [[-0.1]], "b": [0.0]}))
    optimizer.meta_optimizer = keras.optimizers.SGD(learning_rate=1.0)
    run = optimizer.meta_minimize(problems.simple(), 2, second_derivatives=second_derivatives)
    w = optimizer.weights["net"]["linear"]["w"]
    before = w.numpy()[0, 0]
    run.step()
    return before - w.numpy()[0, 0]


@pytest.mark.parametrize("second_derivatives", [False, True])
def test_first_order_cuts_second_derivatives_and_the_flag_restores_them(second_derivatives):
    w = tf.Variable(-0.1)
    with tf.GradientTape() as tape:
        x1 = 1.0 + w * 2.0  # x0 = 1, gradient 2 x0
        g1 = 2 * x1 if second_derivatives else tf.stop_gradient(2 * x1)
        x2 = x1 + w * g1
        meta_loss = x1**2 + x2**2
    expected = tape.gradient(meta_loss, w).numpy()
    np.testing.assert_allclose(meta_gradient_of_one_unroll(second_derivatives), expected, rtol=1e-5)


def test_second_derivatives_change_the_meta_gradient():
    assert not np.isclose(meta_gradient_of_one_unroll(False), meta_gradient_of_one_unroll(True))


def test_net_assignments_give_each_net_its_parameters():
    """The original's simple-multi config: an LSTM on x_0, a fixed Adam(0.1) on x_1."""
    optimizer = meta.MetaOptimizer(
        cw=networks.CoordinateWiseDeepLSTM(layers=(), initializer="zeros"),
        adam=networks.Adam(learning_rate=0.1),
    )
    run = optimizer.meta_minimize(problems.simple_multi_optimizer(), 5, learning_rate=0.01,
                                  net_assignments=[("cw", ["x_0"]), ("adam", ["x_1"])])
    assert run.assignment == {"cw": [0], "adam": [1]}
    run.step()
    np.testing.assert_allclose(run.x[0].numpy(), 1.0)  # zero net, before its first meta-step
    adam, x, state = networks.Adam(learning_rate=0.1), tf.constant(1.0), None
    state = adam.initial_state(())
    for _ in range(5):
        update, state = adam.step({}, 2 * x, state)
        x = x + update
    np.testing.assert_allclose(run.x[1].numpy(), x.numpy(), rtol=1e-6)
    assert len(optimizer.trainable_weights(["adam"])) == 0
    with pytest.raises(ValueError, match="'x_1' matches no pattern"):
        optimizer.meta_loss(problems.simple_multi_optimizer(), 5, net_assignments=[("cw", ["x_0"])])


def test_each_trained_net_gets_its_own_meta_gradient_whatever_the_names_order():
    """Two trained nets named against alphabetical order ('z' before 'a'), each on its own
    parameter of a separable problem: each net's meta-step must equal that of a run of the
    net alone on its parameter."""
    layers = {"z": (3,), "a": (5,)}

    def lstm(name):
        return networks.CoordinateWiseDeepLSTM(layers=layers[name], preprocess_name="LogAndSign")

    both = meta.MetaOptimizer(seed=0, z=lstm("z"), a=lstm("a"))
    initial = {name: [v.numpy() for v in both.trainable_weights([name])] for name in layers}
    both.meta_minimize(problems.simple_multi_optimizer(), 5, learning_rate=0.01,
                       net_assignments=[("z", ["x_0"]), ("a", ["x_1"])]).step()
    for index, name in enumerate(layers):
        alone = meta.MetaOptimizer(**{name: lstm(name)})
        for variable, value in zip(alone.trainable_weights(), initial[name]):
            variable.assign(value)
        problem = problems.Problem("one", (problems.simple_multi_optimizer().params[index],),
                                   lambda params, constants, batch: tf.square(params[0]))
        alone.meta_minimize(problem, 5, learning_rate=0.01).step()
        trained = [v.numpy() for v in both.trainable_weights([name])]
        assert any(not np.array_equal(t, i) for t, i in zip(trained, initial[name]))  # it moved
        for t, w in zip(trained, alone.trainable_weights()):
            np.testing.assert_allclose(t, w.numpy(), rtol=1e-6, atol=1e-8, err_msg=name)


def evaluate_final_loss(optimizer, problem, seed, epochs=4):
    run = optimizer.meta_loss(problem, 20, seed=seed)
    finals = []
    for _ in range(epochs):
        run.reset()
        for _ in range(5):
            _, losses = run.unroll()
        finals.append(losses[-1].numpy())
    return float(np.mean(finals))


def test_short_quadratic_meta_training_beats_the_untrained_net_and_keras_agrees(tmp_path):
    problem = problems.quadratic(batch_size=32)
    optimizer = meta.MetaOptimizer(seed=0, cw=networks.CoordinateWiseDeepLSTM(layers=(20, 20)))
    untrained = evaluate_final_loss(optimizer, problem, seed=100)
    training = optimizer.meta_minimize(problem, 20, learning_rate=0.01, seed=1)
    for _ in range(15):
        training.reset()
        for _ in range(5):
            training.step()
    trained = evaluate_final_loss(optimizer, problem, seed=100)
    assert trained < 0.1 * untrained, (trained, untrained)
    assert trained < 5.0, trained

    # The same weights through LearnedOptimizer give the meta-trainer's evaluation losses.
    optimizer.save(str(tmp_path))
    keras_optimizer = l2l_tf.LearnedOptimizer.from_pretrained(str(tmp_path))
    run = optimizer.meta_loss(problem, 20, seed=5)
    x = keras.Variable(run.x[0].numpy())
    constants = {k: v.read_value() for k, v in run.constants[0].items()}
    meta_losses = np.concatenate([run.unroll()[1].numpy()[:-1] for _ in range(5)])
    keras_losses = []
    for _ in range(100):
        with tf.GradientTape() as tape:
            loss = problem.loss([x.value], constants, ())
        keras_optimizer.apply_gradients([(tape.gradient(loss, x.value), x)])
        keras_losses.append(loss.numpy())
    np.testing.assert_allclose(keras_losses, meta_losses, rtol=2e-4)


def test_bad_arguments_fail_clearly():
    optimizer = meta.MetaOptimizer()
    with pytest.raises(ValueError, match="unroll_length must be a positive integer"):
        optimizer.meta_loss(problems.simple(), 0)
    with pytest.raises(ValueError, match="one per step"):
        optimizer.meta_loss(problems.simple(), 3, loss_weights=[1.0])
    with pytest.raises(ValueError, match="needs a meta-optimizer"):
        optimizer.meta_loss(problems.simple(), 3).step()


def poisoned_problem():
    """x^2 times a constant that is +Inf or NaN in about half of the resets."""
    def sample_scale(rng):
        draw = rng.uniform([])
        return tf.where(draw < 0.25, np.inf, tf.where(draw < 0.5, np.nan, 1.0))

    return problems.Problem(
        name="poisoned",
        params=(problems.Param("x", (3,), problems.normal_initializer(1.0)),),
        loss=lambda params, constants, batch: constants["scale"] * tf.reduce_sum(params[0] ** 2),
        constants={"scale": sample_scale},
    )


def test_non_finite_meta_steps_are_skipped_counted_and_the_nets_stay_finite():
    optimizer = meta.MetaOptimizer(seed=0, cw=networks.CoordinateWiseDeepLSTM(layers=(5,)))
    run = optimizer.meta_minimize(poisoned_problem(), 4, learning_rate=0.01, seed=3)
    finite_epochs = 0
    for _ in range(12):
        curve = meta.run_epoch(run, 2, train=True)
        assert curve.shape == (9,)
        finite_epochs += int(np.all(np.isfinite(curve)))
    skipped = int(run.skipped_steps.numpy())
    assert skipped > 0 and finite_epochs > 0 and skipped + finite_epochs == 12
    assert int(optimizer.meta_optimizer.iterations.numpy()) == 2 * finite_epochs
    for weight in optimizer.trainable_weights():
        assert np.all(np.isfinite(weight.numpy()))
    for slot in optimizer.meta_optimizer.variables:
        assert np.all(np.isfinite(slot.numpy()))


def embedding_problem():
    """A Keras model whose `Embedding` has a sparse gradient: 20 word ids in 30 rows per
    batch, so that a batch leaves rows out and a lazy net's `held` is not all ones."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(64, 5)).astype(np.int32)
    y = (x[:, 0] < 15).astype(np.int32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(30, 3),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    return problems.keras_model(model, x, y, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), batch_size=4)


# (net, problem): an elementwise net on a quadratic; the default's kind of net, whose lazy
# rows read a sparse gradient's rows, on an Embedding.
RECOMPUTED = {
    "coordinatewise, quadratic": (
        lambda: networks.CoordinateWiseDeepLSTM(layers=(5, 5), preprocess_name="LogAndSign",
                                                scale=0.1),
        lambda: problems.quadratic(batch_size=4, num_dims=3)),
    "tensorwise, Embedding": (
        lambda: networks.TensorwiseLSTM(layers=(4,), drift_brake=2.0, drift_brake_steps=1,
                                        drift_brake_scope="net", distance_boost=1e-4,
                                        distance_boost_steps=1),
        embedding_problem),
}


@pytest.mark.parametrize("case", list(RECOMPUTED))
def test_recomputation_gives_the_same_meta_step(case):
    make_net, make_problem = RECOMPUTED[case]

    def weights_before_and_after(recompute):
        optimizer = meta.MetaOptimizer(seed=0, net=make_net())
        optimizer.meta_optimizer = keras.optimizers.SGD(learning_rate=0.1)
        before = [w.numpy() for w in optimizer.trainable_weights()]
        run = optimizer.meta_minimize(make_problem(), 5, recompute=recompute, seed=2)
        run.step()
        run.step()
        return before, [w.numpy() for w in optimizer.trainable_weights()]

    before, plain = weights_before_and_after(False)
    _, recomputed = weights_before_and_after(True)
    assert not np.allclose(before[0], plain[0])
    for a, b in zip(plain, recomputed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_meta_batch_of_samples_averages_their_meta_gradients():
    def weight_change(samples, seed):
        optimizer = meta.MetaOptimizer(seed=0, cw=networks.CoordinateWiseDeepLSTM(
            layers=(4,), preprocess_name="LogAndSign", scale=0.1))
        optimizer.meta_optimizer = keras.optimizers.SGD(learning_rate=1.0)
        before = [w.numpy() for w in optimizer.trainable_weights()]
        run = optimizer.meta_minimize(problems.quadratic(batch_size=4, num_dims=3), 5,
                                      samples=samples, seed=seed)
        run.step()
        return [b - w.numpy() for b, w in zip(before, optimizer.trainable_weights())]

    first = weight_change(1, seed=7)
    second = weight_change(1, seed=7 + meta._SAMPLE_SEED_STRIDE)
    both = weight_change(2, seed=7)
    assert not np.allclose(first[0], second[0])
    for a, b, ab in zip(first, second, both):
        np.testing.assert_allclose(ab, (a + b) / 2, rtol=1e-4, atol=1e-7)


def test_the_meta_step_compiles_with_xla_and_matches():
    def weights_after(jit_compile):
        optimizer = meta.MetaOptimizer(seed=0, cw=networks.CoordinateWiseDeepLSTM(
            layers=(4,), preprocess_name="LogAndSign", scale=0.1))
        run = optimizer.meta_minimize(problems.quadratic(batch_size=4, num_dims=3), 5,
                                      learning_rate=0.01, jit_compile=jit_compile, seed=3)
        run.step()
        run.step()
        return [w.numpy() for w in optimizer.trainable_weights()]

    for a, b in zip(weights_after(False), weights_after(True)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def tensorwise_net_with_outputs():
    """A TensorwiseLSTM whose output layer is not zero (an untrained one is plain Adam)."""
    net = networks.TensorwiseLSTM(layers=(4,))
    weights = networks.weights_to_numpy(net.initial_weights(seed=0))
    weights["linear"]["w"] = weights["linear"]["w"] + 0.5
    return networks.TensorwiseLSTM(layers=(4,), initializer=weights)


def test_a_graph_loop_unroll_gives_the_same_losses_and_meta_steps():
    """The tf.while_loop unroll (for thousands of steps) is the Python-loop unroll."""
    problem = problems.quadratic(batch_size=4, num_dims=3)

    def run_twice(graph_loop):
        optimizer = meta.MetaOptimizer(seed=0, tw=tensorwise_net_with_outputs())
        run = optimizer.meta_minimize(problem, 6, learning_rate=0.01, log_loss=True, seed=2,
                                      graph_loop=graph_loop)
        losses = [run.step()[1].numpy() for _ in range(2)]
        return losses, [w.numpy() for w in optimizer.trainable_weights()]

    (python_losses, python_weights), (graph_losses, graph_weights) = run_twice(False), \
        run_twice(True)
    assert not np.allclose(python_losses[0], python_losses[1])
    np.testing.assert_allclose(graph_losses, python_losses, rtol=1e-5)
    for a, b in zip(graph_weights, python_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_log_loss_sums_the_logs_of_the_losses():
    optimizer = meta.MetaOptimizer(seed=0, tw=tensorwise_net_with_outputs())
    problem = problems.quadratic(batch_size=4, num_dims=3)
    run = optimizer.meta_loss(problem, 5, log_loss=True, seed=1)
    meta_loss, losses = run.unroll()
    np.testing.assert_allclose(meta_loss.numpy(), np.log(losses.numpy()[1:]).sum(), rtol=1e-5)


def test_a_validation_meta_objective_scores_held_out_batches_on_the_same_trajectory(
        mnist_data_dir):
    """The optimizee trains on its training batches either way; the validation objective's
    losses, and its meta-loss, are those of the same parameters on the validation batches."""
    problem = problems.mnist(layers=(4,), batch_size=8, dropout=0.25, validation_size=1000,
                             initializer="glorot")
    optimizer = meta.MetaOptimizer(seed=0, tw=tensorwise_net_with_outputs())
    held_out = optimizer.meta_loss(problem, 3, meta_objective="validation", seed=1)
    on_training = optimizer.meta_loss(problem, 3, seed=1)
    weights = held_out.read_weights()
    x, constants, states, batches = held_out.read_inputs()
    meta_loss, losses, x_end, _ = held_out.forward(weights, x, constants, states, batches)
    training_batches = [pair[0] for pair in batches]
    _, training_losses, x_trained, _ = on_training.forward(weights, x, constants, states,
                                                           training_batches)
    for a, b in zip(x_end, x_trained):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    validation = batches[0][1]

    def validation_loss(params, t):
        return float(problem.loss(params, constants[0], [part[t] for part in validation]))

    np.testing.assert_allclose(losses.numpy()[[0, 3]],
                               [validation_loss(x, 0), validation_loss(x_end, 3)], rtol=1e-5)
    np.testing.assert_allclose(meta_loss.numpy(), losses.numpy()[1:].sum(), rtol=1e-5)
    assert not np.allclose(losses.numpy(), training_losses.numpy(), rtol=1e-3)


def test_a_family_trains_its_members_in_turn_with_one_meta_optimizer(mnist_data_dir):
    family = problems.Family("two", (
        problems.mnist(layers=(4,), batch_size=8, initializer="glorot"),
        problems.mnist(layers=(3, 3), activation="relu", batch_size=16, initializer="glorot")))
    optimizer = meta.MetaOptimizer(seed=0, tw=tensorwise_net_with_outputs())
    run = optimizer.meta_minimize(family, 3, learning_rate=0.01, seed=5)
    shapes = []
    for _ in range(3):
        meta.run_epoch(run, 2, train=True)
        shapes.append([tuple(x.shape) for x in run.current.x])
    assert shapes[0] == shapes[2] != shapes[1]  # member 0, member 1, member 0 again
    assert int(run.member.numpy()) == 2
    assert int(optimizer.meta_optimizer.iterations.numpy()) == 6  # one Adam for all members
    # Each member has its own generator, seeded apart: their first batches differ.
    assert len(run.rngs) == 2 and not np.array_equal(run.rngs[0].state.numpy(),
                                                     run.rngs[1].state.numpy())
