"""How much of a batch-normalised model's test loss is its moving statistics' lag?

    python experiments/batchnorm_lag.py --models=resnet --seeds=0,1,2 --adam_grid=0.001 \\
        --optimizers=default@1,experiments/candidates/decay1400-gd2-from700@1 \\
        --output=experiments/results/batchnorm_lag.md

Trains as `keras_fit.py` does, with its flags (models, optimizers, seeds, epochs, batch size,
the same data; Adam at every rate of --adam_grid). After each epoch the test loss is
measured twice: as `model.evaluate` gives it, with batch normalisation's moving averages
(momentum 0.99: about the last 100 steps), and with those statistics recomputed from 5,000
training images at the current weights (`recomputed`). The second is the loss of the same
weights without the lag: it separates how well an optimizer fits the model from how far its
last steps left the averages behind. Also reported: the conv kernels' mean relative motion
over the last 100 steps of each epoch, ||w_t - w_(t-100)|| / ||w_t||. Resumable: finished
runs are kept in `<output>_runs.json` (`keras_fit.cached_runs`).
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import sys

import keras
import numpy as np
from absl import flags

import keras_fit
from l2l_tf import cli

FLAGS = flags.FLAGS
RECOMPUTE_EXAMPLES = 5000


def recomputed_test_loss(model, data, loss):
    """The test loss with every `BatchNormalization`'s moving statistics set to those of
    `RECOMPUTE_EXAMPLES` training images (one batch, momentum 0), then restored."""
    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.momentum, layer.moving_mean.numpy(), layer.moving_variance.numpy())
             for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(data["train"][0][:RECOMPUTE_EXAMPLES], training=True)
    x, y = data["test"]
    value = float(loss(y, model.predict(x, batch_size=1000, verbose=0)))
    for layer, (momentum, mean, variance) in zip(layers, saved):
        layer.momentum = momentum
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    return value


class KernelMotion(keras.callbacks.Callback):
    """The conv kernels' mean ||w_t - w_(t-100)|| / ||w_t|| at the end of each epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.snapshot, self.step = None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        steps = self.params["steps"]
        if self.step == steps - 100:
            self.snapshot = [v.numpy() for v in self.kernels()]
        elif self.step == steps and self.snapshot is not None:
            self.motion = float(np.mean([
                np.linalg.norm(v.numpy() - old) / np.linalg.norm(v.numpy())
                for v, old in zip(self.kernels(), self.snapshot)]))

    def kernels(self):
        return [v for v in self.model.trainable_variables if len(v.shape) == 4]


def run(model_name, optimizer, seed, data):
    x, y = data["train"]
    keras.utils.set_random_seed(seed)
    model = keras_fit.build_model(model_name)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras_fit.build_optimizer(optimizer, total_steps=None), loss=loss)
    motion, epochs = KernelMotion(), []
    for _ in range(FLAGS.epochs):
        history = model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0,
                            callbacks=[motion])
        epochs.append({
            "train_loss": float(history.history["loss"][-1]),
            "test_loss": float(model.evaluate(*data["test"], batch_size=1000, verbose=0)),
            "recomputed_test_loss": recomputed_test_loss(model, data, loss),
            "kernel_motion": getattr(motion, "motion", float("nan")),
        })
    return epochs


def cell(values):
    """`moving / recomputed (motion)` for one run's last epoch, or for their mean; the motion
    is "n/a" where an epoch had no 100 steps to measure it over."""
    motion = values["kernel_motion"]
    return (f"{values['test_loss']:.4f} / {values['recomputed_test_loss']:.4f} "
            f"({'n/a' if np.isnan(motion) else f'{motion:.3f}'})")


def table(results, seeds, train_examples):
    lines = [f"Command: `python experiments/batchnorm_lag.py {' '.join(sys.argv[1:])}`", "",
             f"Test loss (MNIST's 10,000 test images, cross-entropy) after {FLAGS.epochs} "
             f"epochs at batch {FLAGS.batch_size} on {train_examples:,} training images, "
             "with batch normalisation's moving statistics / with them recomputed from "
             f"{RECOMPUTE_EXAMPLES:,} training images; the conv kernels' relative motion over "
             "the epoch's last 100 steps (n/a: epochs of fewer steps). Seeds "
             f"{', '.join(map(str, seeds))}, then their mean.", "",
             "| model | optimizer | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "| --- | --- |" + " --- |" * (len(seeds) + 1)]
    for (model_name, optimizer), by_seed in results.items():
        last = [by_seed[seed][-1] for seed in seeds]
        mean = {k: np.mean([epoch[k] for epoch in last])
                for k in ("test_loss", "recomputed_test_loss", "kernel_motion")}
        lines.append(f"| {model_name} | {keras_fit.label(optimizer)} | "
                     + " | ".join(cell(values) for values in [*last, mean]) + " |")
    return "\n".join(lines) + "\n"


def describe(model_name, optimizer, seed, epochs):
    last = epochs[-1]
    return (f"{model_name} {keras_fit.label(optimizer)} seed {seed}: test loss "
            f"{last['test_loss']:.4f}, recomputed {last['recomputed_test_loss']:.4f}")


def main(argv):
    optimizers, seeds, _ = keras_fit.check_flags()
    if FLAGS.pretrain_classes:
        raise cli.UsageError("--pretrain_classes: this script trains from Keras's "
                             "initialisation only; measure fine-tuning with keras_fit.py.")
    for model_name in FLAGS.models:
        if model_name in keras_fit.TASKS:
            raise cli.UsageError(f"--models: {model_name} is not a classifier; this script "
                                 "measures classifiers with batch normalisation (resnet, cnn_bn).")
    data = keras_fit.load_data()
    results = keras_fit.cached_runs(run, optimizers, seeds, data, describe)
    text = table(results, seeds, len(data["train"][0]))
    print(text)
    if FLAGS.output:
        cli.write_text_atomically(FLAGS.output, text)


if __name__ == "__main__":
    cli.run(main)
