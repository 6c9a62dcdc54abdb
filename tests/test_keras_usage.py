"""The README's Keras usage, as a new user would run it, on MNIST from TFDS."""

import warnings

import keras
import numpy as np
import tensorflow_datasets as tfds

import l2l_tf


def test_compile_fit_save_load_fit_on_mnist_keeps_the_optimizer_state(tmp_path, mnist_data_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (x_train, y_train), = tfds.as_numpy(
            [tfds.load("mnist", split="train[:2048]", batch_size=-1, as_supervised=True)])
        x_train = x_train.reshape(-1, 784).astype("float32") / 255.0

        model = keras.Sequential([
            keras.Input((784,)),
            keras.layers.Dense(20, activation="sigmoid"),
            keras.layers.Dense(10),
        ])
        model.compile(optimizer=l2l_tf.LearnedOptimizer(),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=128, epochs=1, verbose=0)
        path = str(tmp_path / "mnist.keras")
        model.save(path)
        restored = keras.models.load_model(path)
        saved_states = [s.numpy() for state in model.optimizer.states for s in state]
        loaded_states = [s.numpy() for state in restored.optimizer.states for s in state]
        history = restored.fit(x_train, y_train, batch_size=128, epochs=1, verbose=0)

    library_warnings = [w for w in caught if "l2l_tf" in w.filename
                        or "optimizer" in str(w.message).lower()]
    assert library_warnings == [], [str(w.message) for w in library_warnings]
    # 4 variables x (m, v, t, h, c, p, p_ref, l, b, b_ref, the stop's latch d, the drift
    # brake's displacement D and sums s, the distance boost's T, s and sums)
    assert len(saved_states) == len(loaded_states) == 64
    for a, b in zip(saved_states, loaded_states):
        np.testing.assert_array_equal(a, b)
    assert any(np.any(s != 0) for s in loaded_states)
    assert int(restored.optimizer.iterations.numpy()) == 2 * 16
    assert np.isfinite(history.history["loss"][0])
