"""The shipped optimizers: loading by name, and the MNIST one beating tuned Adam."""

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

import l2l_tf
from l2l_tf import meta, networks, presets, problems

# Adam's learning rate chosen by experiments/reproduce.py's grid search on this problem
# (experiments/results/mnist_results.md).
ADAM_TUNED_LR = 0.03


def test_shipped_optimizers_load_by_name_and_are_the_default():
    assert presets.pretrained_names() == ["mnist", "quadratic"]
    mnist = l2l_tf.LearnedOptimizer.from_pretrained("mnist")
    default = l2l_tf.LearnedOptimizer()
    np.testing.assert_array_equal(*(np.concatenate([w.ravel() for w in _flat(o)])
                                    for o in (mnist, default)))
    quadratic = l2l_tf.LearnedOptimizer.from_pretrained("quadratic")
    assert quadratic.nets["cw"].preprocess_name == "identity"
    assert mnist.nets["cw"].get_config()["preprocess_name"] == "LogAndSign"
    with pytest.raises(FileNotFoundError, match="No shipped optimizer named 'cifar'"):
        l2l_tf.LearnedOptimizer.from_pretrained("cifar")


def _flat(optimizer):
    values = optimizer.net_weight_values()
    return [v for net in values.values() for module in net.values() for v in module.values()]


def test_shipped_mnist_optimizer_beats_tuned_adam_on_the_same_batches(mnist_data_dir):
    problem = problems.mnist(mode="test")
    learned = meta.MetaOptimizer(**networks.load_nets(presets.pretrained_path("mnist")))
    adam = meta.MetaOptimizer(adam=networks.Adam(learning_rate=ADAM_TUNED_LR))
    finals = {}
    for name, optimizer in (("learned", learned), ("adam", adam)):
        run = optimizer.meta_loss(problem, 20, seed=42)
        finals[name] = np.mean([meta.run_epoch(run, 5, train=False)[-1] for _ in range(4)])
    assert finals["learned"] < finals["adam"], finals


def mnist_arrays(split, count):
    (images, labels), = tfds.as_numpy(
        [tfds.load("mnist", split=f"{split}[:{count}]", batch_size=-1, as_supervised=True)])
    return images.reshape(count, 784).astype("float32") / 255.0, labels


def fit_losses(optimizer, seed, x, y, x_test, y_test):
    keras.utils.set_random_seed(seed)
    small = keras.initializers.RandomNormal(stddev=0.01, seed=seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(20, activation="sigmoid", kernel_initializer=small,
                           bias_initializer=small),
        keras.layers.Dense(10, kernel_initializer=small, bias_initializer=small),
    ])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)


def test_shipped_mnist_optimizer_beats_tuned_adam_through_model_fit(mnist_data_dir):
    x, y = mnist_arrays("train", 128 * 100)  # 100 steps of batch 128
    x_test, y_test = mnist_arrays("test", 2000)
    learned, adam = [], []
    for seed in (0, 1, 2):
        learned.append(fit_losses(l2l_tf.LearnedOptimizer(), seed, x, y, x_test, y_test))
        adam.append(fit_losses(keras.optimizers.Adam(ADAM_TUNED_LR), seed, x, y, x_test, y_test))
    assert np.mean(learned) < np.mean(adam), (learned, adam)
