"""Shipped learned optimizers in plain `model.fit`, over several epochs of MNIST.

    python experiments/keras_fit.py --output=experiments/results/keras_fit.md

The paper meta-trains and evaluates on 100-200 optimizee steps; a Keras user runs
`model.fit` for epochs (469 steps each at batch 128). This measures what happens then, on the
paper's MLP, the same MLP with ReLU, and a small CNN the optimizers never saw: test loss and
accuracy after each epoch, mean over --seeds (each seed: the model's initialisation and the
shuffling, the same for every optimizer).

--optimizers lists `name@learning_rate`, optionally `:cosine` (cosine decay to 0 over the
whole run, `keras.optimizers.schedules.CosineDecay`). `name` is `adam`, a shipped learned
optimizer (`l2l_tf.presets.pretrained_names()`) or a directory of nets saved by train.py.
Writes a Markdown table to --output and the per-epoch numbers next to it (.csv).
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import csv
import io
import sys
import time

import keras
import numpy as np
from absl import flags

from l2l_tf import LearnedOptimizer, cli, problems

DEFAULT_OPTIMIZERS = [
    "adam@0.001", "adam@0.03", "adam@0.03:cosine",
    "mnist-wide@1", "mnist-wide@0.3", "mnist-wide@0.3:cosine", "mnist-family@0.5",
]
MODELS = ("mlp_sigmoid", "mlp_relu", "cnn")

flags.DEFINE_list("models", list(MODELS), f"Models to train, of {', '.join(MODELS)}.")
flags.DEFINE_list("optimizers", DEFAULT_OPTIMIZERS,
                  "Optimizers as name@learning_rate[:cosine] (see the module docstring).")
flags.DEFINE_integer("epochs", 5, "Epochs of model.fit per run.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_list("seeds", ["0", "1"], "Seeds; every optimizer runs once per seed.")
flags.DEFINE_integer("train_examples", 0, "Train on the first this many examples (0: all 60,000).",
                     lower_bound=0)
flags.DEFINE_boolean("jit_compile", True, "Compile the train step with XLA.")
flags.DEFINE_string("output", None, "Markdown file for the table (a .csv goes next to it).")
FLAGS = flags.FLAGS


def build_model(name):
    """The model `name`, on flat 784-pixel inputs, returning logits."""
    if name == "cnn":
        layers = [
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
        ]
    else:
        layers = [keras.layers.Dense(20, activation=name.split("_")[1])]
    return keras.Sequential([keras.Input((784,)), *layers, keras.layers.Dense(10)])


def parse_optimizer(spec):
    """`(name, learning_rate, schedule)` from `name@learning_rate[:cosine]`."""
    name, sep, rate = spec.rpartition("@")
    rate, _, schedule = rate.partition(":")
    try:
        rate = float(rate)
    except ValueError:
        rate = None
    if not sep or not name or rate is None or rate <= 0 or schedule not in ("", "cosine"):
        raise cli.UsageError(
            f"--optimizers entry {spec!r} is not name@learning_rate[:cosine] with a positive "
            "rate, e.g. adam@0.001 or mnist-wide@0.3:cosine."
        )
    return name, rate, schedule or "constant"


def build_optimizer(name, rate, schedule, total_steps):
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, total_steps)
    if name == "adam":
        return keras.optimizers.Adam(rate)
    return LearnedOptimizer.from_pretrained(name, learning_rate=rate)


def check_flags():
    unknown = sorted(set(FLAGS.models) - set(MODELS))
    if unknown:
        raise cli.UsageError(f"unknown --models {unknown}: use some of {', '.join(MODELS)}.")
    if FLAGS.output is not None and not FLAGS.output.endswith(".md"):
        raise cli.UsageError(f"--output={FLAGS.output!r} must end in .md.")
    try:
        seeds = [int(seed) for seed in FLAGS.seeds]
    except ValueError:
        raise cli.UsageError(f"--seeds={','.join(FLAGS.seeds)} must be integers.") from None
    optimizers = [parse_optimizer(spec) for spec in FLAGS.optimizers]
    for name, rate, schedule in optimizers:  # a wrong name fails now, not after an hour
        if name != "adam":
            with cli.configuration_errors():
                build_optimizer(name, rate, schedule, 1)
    return optimizers, seeds


def run(model_name, optimizer, seed, data):
    """Test `(loss, accuracy)` after each epoch, `[epochs, 2]`."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = build_model(model_name)
    total_steps = FLAGS.epochs * -(-len(x_train) // FLAGS.batch_size)
    model.compile(
        optimizer=build_optimizer(*optimizer, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=FLAGS.jit_compile,
    )
    results = []
    for _ in range(FLAGS.epochs):
        model.fit(x_train, y_train, batch_size=FLAGS.batch_size, epochs=1, verbose=0)
        results.append(model.evaluate(x_test, y_test, batch_size=1000, verbose=0))
    return np.array(results)


def load_data():
    data = []
    for mode in ("train", "test"):
        images, labels = problems.load_tfds("mnist", mode)
        if mode == "train" and FLAGS.train_examples:
            images, labels = images[: FLAGS.train_examples], labels[: FLAGS.train_examples]
        data.append((images.reshape(-1, 784).astype(np.float32) / 255.0, labels))
    return data


def label(optimizer):
    name, rate, schedule = optimizer
    return f"{name} {rate:g}" + (", cosine" if schedule == "cosine" else "")


def report(results, seeds):
    """Markdown: one row per model and optimizer, test loss per epoch and final accuracy."""
    epochs = range(1, FLAGS.epochs + 1)
    lines = [
        (
            f"Test loss after each epoch of `model.fit` (batch {FLAGS.batch_size}, "
            f"jit_compile={FLAGS.jit_compile}), mean over seeds {', '.join(map(str, seeds))}; "
            "accuracy after the last epoch, and the standard error of the last loss."
        ),
        f"Command: `python experiments/keras_fit.py {' '.join(sys.argv[1:])}`",
        "",
        "| model | optimizer | " + " | ".join(f"epoch {e}" for e in epochs)
        + " | last ± s.e. | accuracy |",
        "| --- | --- | " + " | ".join("---" for _ in epochs) + " | --- | --- |",
    ]
    for (model_name, optimizer), runs in results.items():
        runs = np.stack(runs)  # [seeds, epochs, (loss, accuracy)]
        mean = runs.mean(axis=0)
        error = runs[:, -1, 0].std(ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.nan
        lines.append(
            f"| {model_name} | {label(optimizer)} | "
            + " | ".join(f"{loss:.3f}" for loss in mean[:, 0])
            + f" | {mean[-1, 0]:.3f} ± {error:.3f} | {mean[-1, 1]:.3f} |"
        )
    return "\n".join(lines) + "\n"


def csv_text(results, seeds):
    """Per-seed, per-epoch rows; quoted by `csv`, as labels such as "x 0.3, cosine" hold commas."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["model", "optimizer", "seed", "epoch", "test_loss", "test_accuracy"])
    for (model_name, optimizer), runs in results.items():
        for seed, run_results in zip(seeds, runs):
            for epoch, (loss, accuracy) in enumerate(run_results, 1):
                writer.writerow([model_name, label(optimizer), seed, epoch, f"{loss:.6f}",
                                 f"{accuracy:.6f}"])
    return text.getvalue()


def main(argv):
    optimizers, seeds = check_flags()
    data = load_data()
    results = {}
    for model_name in FLAGS.models:
        for optimizer in optimizers:
            start = time.time()
            runs = results[(model_name, optimizer)] = [
                run(model_name, optimizer, seed, data) for seed in seeds
            ]
            last = np.mean([r[-1] for r in runs], axis=0)
            print(f"{model_name:12s} {label(optimizer):28s} test loss {last[0]:.3f}, "
                  f"accuracy {last[1]:.3f} ({time.time() - start:.0f} s)", flush=True)
    table = report(results, seeds)
    print(table)
    if FLAGS.output:
        cli.write_text_atomically(FLAGS.output, table)
        cli.write_text_atomically(FLAGS.output[: -len(".md")] + ".csv", csv_text(results, seeds))


if __name__ == "__main__":
    cli.run(main)
