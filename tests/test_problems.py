import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from l2l_tf import meta, networks, presets, preprocess, problems


def rng(seed=0):
    return tf.random.Generator.from_seed(seed)


def test_quadratic_distributions_and_loss():
    uniform = problems.quadratic(batch_size=8, num_dims=3)
    constants = uniform.sample_constants(rng())
    assert constants["w"].shape == (8, 3, 3) and constants["y"].shape == (8, 3)
    assert 0 <= constants["w"].numpy().min() and constants["w"].numpy().max() < 1
    normal = problems.quadratic(batch_size=64, num_dims=3, distribution="normal")
    assert normal.sample_constants(rng())["w"].numpy().min() < 0
    x = uniform.init_params(rng())[0]
    assert abs(float(tf.math.reduce_std(x)) - 0.01) < 0.005
    w, y = constants["w"].numpy(), constants["y"].numpy()
    want = np.mean(np.sum((np.einsum("bij,bj->bi", w, x.numpy()) - y) ** 2, axis=1))
    loss = uniform.loss([x], constants, uniform.sample_batch(rng()))
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)
    with pytest.raises(ValueError, match="'uniform' or 'normal'"):
        problems.quadratic(distribution="gaussian")


def test_ensemble_sums_weighted_problems_and_prefixes_names():
    problem = problems.ensemble([problems.simple(), problems.simple_multi_optimizer(2)], [1.0, 0.5])
    assert problem.param_names == ["problem_0/x", "problem_1/x_0", "problem_1/x_1"]
    params = [tf.constant(2.0), tf.constant(1.0), tf.constant(3.0)]
    assert problem.sample_batch(rng()) == ((), ())  # no data
    np.testing.assert_allclose(problem.loss(params, {}, ((), ())).numpy(), 4.0 + 0.5 * (1 + 9))


def test_mnist_problem_reads_tfds_offline_and_samples_fresh_batches(mnist_data_dir):
    problem = problems.mnist(mode="test")
    assert [p.shape for p in problem.params] == [(784, 20), (20,), (20, 10), (10,)]
    generator = rng(3)
    params = problem.init_params(generator)
    losses = [problem.loss(params, {}, problem.sample_batch(generator)).numpy() for _ in range(3)]
    # Near log(10) at a small random initialisation, and a different batch every call.
    np.testing.assert_allclose(losses, np.log(10), atol=0.05)
    assert len(set(losses)) == 3
    two_layers = problems.mnist(layers=(20, 20), activation="relu", mode="test")
    assert len(two_layers.params) == 6
    with pytest.raises(ValueError, match="Unknown activation"):
        problems.mnist(activation="swish2")


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared in"):
        problems.load_tfds("mnist", "train", data_dir=str(tmp_path))


def test_cifar10_with_tfds_mock_data_trains_conv_kernels_with_a_kernel_lstm():
    with tfds.testing.mock_data(num_examples=64):
        problem = problems.cifar10(batch_size=16, mode="train")
    shapes = dict(zip(problem.param_names, [p.shape for p in problem.params]))
    assert shapes["conv_0/w"] == (5, 5, 3, 16) and shapes["mlp/linear_0/w"] == (4 * 4 * 16, 32)
    optimizer = meta.MetaOptimizer(
        conv=networks.KernelDeepLSTM(kernel_shape=(5, 5), layers=(4,), preprocess_name="LogAndSign"),
        fc=networks.CoordinateWiseDeepLSTM(layers=(4,), preprocess_name="LogAndSign", scale=0.01),
    )
    run = optimizer.meta_minimize(problem, 2, net_assignments=[("conv", [r"^conv_\d+/w$"]), ("fc", [".*"])])
    assert run.assignment["conv"] == [0, 2, 4]
    before = optimizer.weights["conv"]["lstm_0"]["w_gates"].numpy().copy()
    meta_loss, losses = run.step()
    assert np.isfinite(meta_loss.numpy()) and np.all(np.isfinite(losses.numpy()))
    assert not np.array_equal(before, optimizer.weights["conv"]["lstm_0"]["w_gates"].numpy())
    assert run.states["conv"][0][0].shape == (3 * 16, 4)


def test_cifar_multi_preset_assigns_kernels_and_the_rest():
    with tfds.testing.mock_data(num_examples=32):
        problem, net_config, assignments = presets.get_config("cifar-multi")
    optimizer = meta.MetaOptimizer(**net_config)
    run = optimizer.meta_loss(problem, 1, net_assignments=assignments)
    assert run.assignment["conv"] == [0, 2, 4]
    assert sorted(run.assignment["fc"]) == [1, 3, 5, 6, 7, 8, 9]


def test_keras_model_adapter_matches_the_hand_written_mlp():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="sigmoid"),
                              keras.layers.Dense(3)])
    data = np.random.default_rng(0)
    x = data.normal(size=(50, 5)).astype(np.float32)
    y = data.integers(0, 3, 50).astype(np.int32)
    problem = problems.keras_model(
        model, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True), batch_size=50)
    assert problem.param_names == [v.path for v in model.trainable_variables]
    params = problem.init_params(rng())
    for p, v in zip(params, model.trainable_variables):
        np.testing.assert_array_equal(p.numpy(), v.numpy())
    generator = rng(1)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = problem.loss(params, {}, problem.sample_batch(generator))
    grads = tape.gradient(loss, params)
    indices = rng(1).uniform([50], 0, 50, dtype=tf.int64).numpy()
    with tf.GradientTape() as tape:
        logits = model(x[indices])
        want = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[indices], logits)
    want_grads = tape.gradient(want, model.trainable_variables)
    np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-6)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-7)
    # And a meta-training step runs on it.
    run = meta.MetaOptimizer(seed=0).meta_minimize(problem, 3)
    assert np.isfinite(run.step()[0].numpy())


def test_mnist_mix_and_family_presets_are_ensembles_of_mlps(mnist_data_dir):
    mix, mix_nets, _ = presets.get_config("mnist-mix", preset="paper", mode="test")
    family, family_nets, _ = presets.get_config("mnist-family", preset="paper", mode="test")
    assert len(mix.params) == 8 and list(mix_nets) == list(family_nets) == ["cw"]
    shapes = dict(zip(family.param_names, [p.shape for p in family.params]))
    assert len(shapes) == 4 + 4 + 6
    assert shapes["problem_1/mlp/linear_0/w"] == (784, 20)
    assert shapes["problem_2/mlp/linear_1/w"] == (20, 20)  # the 2-hidden-layer member
    # Each member draws its own batch every step.
    batch = family.sample_batch(rng(0))
    assert len(batch) == 3 and not np.array_equal(batch[0][1].numpy(), batch[1][1].numpy())
    # Members are sigmoid, ReLU and 2-layer sigmoid: the family loss is their sum (ReLU and
    # sigmoid give different losses on the same weights and batch).
    params = family.init_params(rng(1))
    family_loss = family.loss(params[:4] + params[:4] + params[8:], {}, (batch[0],) * 3)
    members = [problems.mnist(activation=a, mode="test").loss(params[:4], {}, batch[0])
               for a in ("sigmoid", "relu")]
    assert abs(float(members[0]) - float(members[1])) > 1e-4
    two_layer = problems.mnist(layers=(20, 20), mode="test").loss(params[8:], {}, batch[0])
    np.testing.assert_allclose(float(family_loss), float(members[0] + members[1] + two_layer),
                               rtol=1e-5)


def test_mnist_keras_deep_family_adds_a_deep_relu_mlp_in_turn(mnist_data_dir):
    keras_family, _, _ = presets.get_config("mnist-keras", mode="test")
    deep_family, nets, _ = presets.get_config("mnist-keras-deep", mode="test")
    assert isinstance(deep_family, problems.Family) and list(nets) == ["tensorwise"]
    assert len(deep_family.members) == len(keras_family.members) + 1
    deep = deep_family.members[6]
    params = deep.init_params(rng(0))
    assert [tuple(p.shape) for p in params[0::2]] == [(784, 64)] + [(64, 64)] * 5 + [(64, 10)]
    # Keras's initialisation: Glorot kernels, U(-l, l) with l = sqrt(6 / (64 + 64)).
    np.testing.assert_allclose(float(tf.math.reduce_std(params[2])),
                               np.sqrt(6.0 / 128) / np.sqrt(3), rtol=0.1)
    others = [m for i, m in enumerate(deep_family.members) if i != 6]
    assert [m.param_names for m in others] == [m.param_names for m in keras_family.members]


def test_mnist_glorot_initialisation_is_keras_dense_default_and_mnist_inits_has_both(
        mnist_data_dir):
    glorot = problems.mnist(initializer="glorot", mode="test").init_params(rng(2))
    for w in glorot[0::2]:  # U(-l, l), l = sqrt(6 / (fan_in + fan_out)): std l / sqrt(3)
        limit = np.sqrt(6.0 / sum(w.shape))
        assert limit * 0.99 < float(tf.reduce_max(tf.abs(w))) <= limit
        np.testing.assert_allclose(float(tf.math.reduce_std(w)), limit / np.sqrt(3), rtol=0.05)
    assert all(not np.any(b.numpy()) for b in glorot[1::2])  # zero biases, as Dense's
    # The original's N(0, 0.01^2) stays the default, drawn exactly as before.
    normal = problems.mnist(mode="test").init_params(rng(2))
    np.testing.assert_array_equal(normal[0].numpy(), rng(2).normal((784, 20), stddev=0.01))
    with pytest.raises(ValueError, match="Unknown MLP initializer 'he'"):
        problems.mnist(initializer="he")
    inits, nets, _ = presets.get_config("mnist-inits", preset="wide", mode="test")
    params = inits.init_params(rng(4))
    assert len(params) == 8 and list(nets) == ["cw"]
    assert float(tf.math.reduce_std(params[0])) < 0.02 < float(tf.math.reduce_std(params[4]))
    assert not np.any(params[5].numpy())


def test_wide_preset_sees_the_sign_of_a_two_layer_mlps_first_layer_gradients(mnist_data_dir):
    # Why the paper's optimizer cannot learn the 2-hidden-layer MLP: at initialisation every
    # first-layer gradient is below e^-10, where LogAndSign(10) replaces the sign by e^10 g,
    # nearly 0. The "wide" preset's k = 20 keeps it.
    problem = problems.mnist(layers=(20, 20), mode="test")
    generator = rng(0)
    params = problem.init_params(generator)
    batch = problem.sample_batch(generator)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = problem.loss(params, {}, batch)
    first_layer = tf.reshape(tape.gradient(loss, params)[0], [-1, 1])
    nonzero = tf.boolean_mask(first_layer, tf.abs(first_layer[:, 0]) > 0)  # not border pixels
    assert nonzero.shape[0] > 0.5 * first_layer.shape[0]
    paper_k, wide_k = (presets.PRESETS[name]["k"] for name in ("paper", "wide"))
    paper_sign = preprocess.LogAndSign(paper_k)(nonzero)[:, 1].numpy()
    wide_sign = preprocess.LogAndSign(wide_k)(nonzero)[:, 1].numpy()
    assert np.abs(paper_sign).max() < 0.5
    assert np.mean(np.abs(wide_sign) == 1.0) > 0.95  # 0.985 with this seed


def test_held_out_numbers_are_on_the_other_split_which_no_batch_comes_from(mnist_data_dir):
    """The batches come from the train split only, and `heldout` is the model's loss and
    accuracy on all of the test split: with the splits mixed up this fails."""
    problem = problems.mnist(mode="train", heldout_split="test", initializer="glorot")
    splits = {mode: problems.load_tfds("mnist", mode) for mode in ("train", "test")}
    rows = {mode: {image.tobytes() for image in images.reshape(-1, 784)}
            for mode, (images, _) in splits.items()}
    generator = rng(0)
    for _ in range(3):
        images, _ = problem.sample_batch(generator)
        for image in images.numpy().reshape(-1, 784):
            assert image.tobytes() in rows["train"] and image.tobytes() not in rows["test"]
    params = [p.numpy() for p in problem.init_params(generator)]
    loss, accuracy = problem.heldout([tf.constant(p) for p in params])
    for mode, want in (("test", True), ("train", False)):  # the test split's, not the train's
        images, labels = splits[mode]
        hidden = 1 / (1 + np.exp(-(images.reshape(-1, 784) / 255.0 @ params[0] + params[1])))
        logits = hidden @ params[2] + params[3]
        logits -= logits.max(axis=1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        expected_loss = -log_softmax[np.arange(len(labels)), labels].mean()
        expected_accuracy = (logits.argmax(axis=1) == labels).mean()
        assert np.isclose(float(loss), expected_loss, rtol=1e-4) == want
        assert np.isclose(float(accuracy), expected_accuracy, atol=1e-6) == want
    with pytest.raises(ValueError, match="a held-out split must be the other one"):
        problems.mnist(mode="test", heldout_split="test")


def test_a_validation_split_holds_out_the_split_s_last_images_without_dropout(mnist_data_dir):
    """Training batches come from the first `train_size` images only, validation batches
    from the last `validation_size`, and carry no dropout masks (inference mode)."""
    problem = problems.mnist(layers=(4,), dropout=0.5, validation_size=10000, train_size=3000,
                             initializer="glorot")
    images, _ = problems.load_tfds("mnist", "train")
    images = images.reshape(-1, 784)
    rows = {"train": {row.tobytes() for row in images[:3000]},
            "validation": {row.tobytes() for row in images[-10000:]}}
    generator = rng(0)
    for _ in range(3):
        train_batch = problem.sample_batch(generator)
        validation_batch = problem.validation_batch(generator)
        assert len(train_batch) == 3 and len(validation_batch) == 2  # masks only for training
        for part, batch in (("train", train_batch), ("validation", validation_batch)):
            other = "validation" if part == "train" else "train"
            for row in batch[0].numpy():
                assert row.tobytes() in rows[part] and row.tobytes() not in rows[other]
    assert problems.mnist(layers=(4,)).validation_batch is None
