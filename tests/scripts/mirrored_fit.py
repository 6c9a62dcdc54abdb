"""Run by test_distribute.py in its own process: two logical CPUs need a fresh runtime.

Prints one JSON line: the largest difference between one-device and MirroredStrategy
training, and between the replicas' copies of the optimizer's states.
"""

import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import l2l_tf  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 6)).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int32")
NETS = {"cw": {"net": "CoordinateWiseDeepLSTM",
               "net_options": {"layers": (6, 6), "preprocess_name": "LogAndSign", "scale": 0.1}}}
# A net that pools a reading over every variable's state before each step (the drift brake
# from step 3, one drift ratio for the model), which `apply` writes in the replica context.
POOLED_NETS = {"tw": {"net": "TensorwiseLSTM",
                      "net_options": {"layers": (4,), "drift_brake": 8.0, "drift_brake_steps": 2,
                                      "drift_brake_scope": "net"}}}


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")


def train(strategy, epochs=3, callbacks=(), nets=NETS):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="sigmoid"),
                                  keras.layers.Dense(2)])
        model.compile(optimizer=l2l_tf.LearnedOptimizer(nets=nets, seed=0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=False,
              callbacks=list(callbacks))
    return model


def max_difference(a, b):
    return max(float(np.max(np.abs(u.numpy() - v.numpy()))) for u, v in zip(a, b))


def replica_gap(slots):
    """The largest difference between the two replicas' copies of `slots`."""
    gap = 0.0
    for slot in slots:
        copies = [v.numpy() for v in slot.value.values]
        gap = max(gap, float(np.max(np.abs(copies[0] - copies[1]))))
    return gap


def states(model):
    return [s for st in model.optimizer.states for s in st]


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
single = train(tf.distribute.get_strategy())
multi = train(mirrored)
pooled_single = train(tf.distribute.get_strategy(), nets=POOLED_NETS)
pooled_multi = train(mirrored, nets=POOLED_NETS)
pooled_slots = states(pooled_multi) + list(pooled_multi.optimizer.pooled_readings.values())
reading = pooled_multi.optimizer.pooled_readings["tw"].numpy()  # [<D, u>, |u|^2 / 2] summed

backup = os.path.join(sys.argv[1], "backup")
try:
    train(mirrored, callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()])
except KeyboardInterrupt:
    pass
restored = train(mirrored, callbacks=[keras.callbacks.BackupAndRestore(backup)])
print(json.dumps({
    "variables": max_difference(single.trainable_variables, multi.trainable_variables),
    "states": max_difference(states(single), states(multi)),
    "replica_gap": replica_gap(states(multi)),
    "pooled_variables": max_difference(pooled_single.trainable_variables,
                                       pooled_multi.trainable_variables),
    "pooled_states": max_difference(states(pooled_single), states(pooled_multi)),
    "pooled_replica_gap": replica_gap(pooled_slots),
    "pooled_brake": float(np.clip(reading[0] / (reading[1] + 1e-30) / 8.0, 0.1, 1.0)),
    "restored_variables": max_difference(multi.trainable_variables, restored.trainable_variables),
    "restored_states": max_difference(states(multi), states(restored)),
    "iterations": [int(multi.optimizer.iterations.numpy()),
                   int(restored.optimizer.iterations.numpy())],
}))
