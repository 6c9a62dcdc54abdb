"""How much of a classifier's held-out loss is overconfidence?

    python experiments/calibration.py --train_examples=5000 --epochs=20 --report_epochs=5,20 \\
        --models=mlp_sigmoid,mlp_relu,cnn,mlp_dropout,quickstart,cnn_bn,lstm_rows \\
        --seeds=0,1,2 --adam_grid=0.001 --optimizers=default@1 \\
        --output=experiments/results/calibration_small5000.md

Trains as `keras_fit.py` does, with its flags and the same runs (`keras_fit.run`). After each
epoch the test split is scored twice: as `keras_fit.py` scores it (cross-entropy of the
model's logits), and with the logits divided by one temperature T, the T of `TEMPERATURES`
that gives the least cross-entropy on the validation split (temperature scaling, Guo et al.
2017, "On calibration of modern neural networks"). Dividing by T changes no predicted class,
so accuracy is the same; the calibrated loss is what the model's ranking of the classes is
worth once its confidence is set on data it did not train on. Where an optimizer's test loss
trails another's and its calibrated loss does not, the gap is confidence (T > 1: too sure),
which the user can remove after training with a validation split, not a worse fit.
With --label_noise the validation labels are as wrong as the training ones, so T fits the
noise rather than the test split's true labels (session 55: the calibrated loss is then
worse than the plain one). Classifiers only. Resumable: finished runs are kept in
`<output>_runs.json` (`keras_fit.cached_runs`).
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import functools
import sys

import numpy as np
from absl import flags

import keras_fit
from l2l_tf import cli

FLAGS = flags.FLAGS
# Candidate temperatures, 2.9% apart: fine enough that the loss at the best one is within
# about 0.1% of the continuous optimum on MNIST's models.
TEMPERATURES = np.geomspace(0.1, 10.0, 161)
FLAGS.set_default("models", [name for name in keras_fit.MODELS if name not in keras_fit.TASKS])


def cross_entropy(logits, labels, temperature=1.0):
    """Mean cross-entropy of `labels` under softmax(logits / temperature), in float64."""
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def best_temperature(logits, labels):
    """The temperature of `TEMPERATURES` with the least cross-entropy on (logits, labels)."""
    return float(min(TEMPERATURES, key=lambda t: cross_entropy(logits, labels, t)))


def calibrated(model, data):
    """`{"temperature", "calibrated_test_loss"}`: T chosen on the validation split alone,
    then the test split's cross-entropy at T."""
    logits = {split: model.predict(data[split][0], batch_size=1000, verbose=0)
              for split in ("validation", "test")}
    temperature = best_temperature(logits["validation"], data["validation"][1])
    return {"temperature": temperature,
            "calibrated_test_loss": cross_entropy(logits["test"], data["test"][1], temperature)}


def table(results, optimizers, seeds, epoch, data_name):
    """Per model and optimizer at `epoch`: test loss, calibrated test loss (mean ± standard
    error), the mean temperature and test accuracy; then, per optimizer other than Adam(),
    on how many models each loss is below Adam()'s. `data_name` says whose test split."""
    lines = [f"Epoch {epoch}: held-out test loss ({data_name}'s test split, cross-entropy) as "
             "the model gives it, and calibrated (logits / T, T chosen on the validation "
             "split); mean ± standard error over seeds "
             f"{', '.join(map(str, seeds))}.", "",
             "| model | optimizer | test loss | calibrated test loss | T | test accuracy |",
             "| --- | --- | --- | --- | --- | --- |"]
    means = {}
    for (model_name, optimizer), by_seed in results.items():
        at = [by_seed[seed][epoch - 1] for seed in seeds]
        loss, calibrated_loss = ([run[k] for run in at]
                                 for k in ("test_loss", "calibrated_test_loss"))
        means[(model_name, optimizer)] = (np.mean(loss), np.mean(calibrated_loss))
        lines.append(
            f"| {model_name} | {keras_fit.label(optimizer)} | {keras_fit.mean_and_error(loss)} "
            f"| {keras_fit.mean_and_error(calibrated_loss)} "
            f"| {np.mean([run['temperature'] for run in at]):.2f} "
            f"| {100 * np.mean([run['test_accuracy'] for run in at]):.2f}% |")
    adam = keras_fit.DEFAULT_ADAM
    models = list(dict.fromkeys(model_name for model_name, _ in results))
    lines.append("")
    for optimizer in optimizers:
        if optimizer == adam:
            continue
        below = [sum(means[(m, optimizer)][i] < means[(m, adam)][i] for m in models)
                 for i in (0, 1)]
        lines.append(f"- {keras_fit.label(optimizer)}: test loss below Adam()'s on {below[0]} "
                     f"of {len(models)} models, calibrated test loss on {below[1]}.")
    return "\n".join(lines) + "\n"


def describe(model_name, optimizer, seed, epochs):
    last = epochs[-1]
    return (f"{model_name} {keras_fit.label(optimizer)} seed {seed}: test loss "
            f"{last['test_loss']:.4f}, calibrated {last['calibrated_test_loss']:.4f} "
            f"(T {last['temperature']:.2f})")


def main(argv):
    optimizers, seeds, report_epochs = keras_fit.check_flags()
    not_classifiers = keras_fit.non_classifiers()
    if not_classifiers:
        raise cli.UsageError(f"--models={','.join(not_classifiers)} do not classify (on "
                             f"--dataset={FLAGS.dataset}), and this script calibrates a "
                             "classifier's logits: leave them out.")
    data = keras_fit.load_data()
    run = functools.partial(keras_fit.run, measure=calibrated)
    results = keras_fit.cached_runs(run, optimizers, seeds, data, describe)
    data_name = "MNIST" if FLAGS.dataset == "mnist" else FLAGS.dataset
    text = "\n".join([f"Command: `python experiments/calibration.py {' '.join(sys.argv[1:])}`",
                      f"Training examples: {len(data['train'][1]):,}; validation "
                      f"{len(data['validation'][1]):,}; test {len(data['test'][1]):,}.", "",
                      *(table(results, optimizers, seeds, epoch, data_name)
                        for epoch in report_epochs)])
    print(text)
    if FLAGS.output:
        cli.write_text_atomically(FLAGS.output, text)


if __name__ == "__main__":
    cli.run(main)
