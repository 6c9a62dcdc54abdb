"""Run by test_distribute.py in its own process (two logical CPUs need a fresh runtime).

Meta-trains 3 Adam steps with MirroredStrategy over 2 replicas (each replica's unroll as a
graph, and compiled with XLA), and on one device with 2 samples per step, from the same seeds;
prints the largest differences of the nets' weights and losses.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from l2l_tf import meta, networks, problems  # noqa: E402

PROBLEM = problems.quadratic(batch_size=4, num_dims=3)


def new_optimizer():
    optimizer = meta.MetaOptimizer(seed=0, cw=networks.CoordinateWiseDeepLSTM(
        layers=(4,), preprocess_name="LogAndSign", scale=0.1))
    optimizer.meta_optimizer = keras.optimizers.Adam(0.01)
    optimizer.meta_optimizer.build(optimizer.trainable_weights())
    return optimizer


def train(run, optimizer):
    losses = [float(run.step()[0].numpy()) for _ in range(3)]
    run.reset()
    losses.append(float(run.step()[0].numpy()))
    return [w.numpy() for w in optimizer.trainable_weights()], losses


single_optimizer = new_optimizer()
single, single_losses = train(single_optimizer.meta_minimize(PROBLEM, 5, samples=2, seed=7),
                              single_optimizer)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def mirrored_training(jit_compile):
    with strategy.scope():
        optimizer = new_optimizer()
    run = optimizer.meta_minimize(PROBLEM, 5, seed=7, strategy=strategy, jit_compile=jit_compile)
    weights, losses = train(run, optimizer)
    copies = [[c.numpy() for c in w.values] for w in optimizer.trainable_weights()]
    return {
        "weights": max(float(np.max(np.abs(a - b))) for a, b in zip(single, weights)),
        "losses": max(abs(a - b) for a, b in zip(single_losses, losses)),
        "replica_gap": max(float(np.max(np.abs(c[0] - c[1]))) for c in copies),
    }


print(json.dumps({
    "graph": mirrored_training(jit_compile=False),
    "xla": mirrored_training(jit_compile=True),
    "changed": float(np.max(np.abs(single[0] - new_optimizer().trainable_weights()[0].numpy()))),
}))
