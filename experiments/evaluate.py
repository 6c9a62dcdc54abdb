"""Evaluates a learned optimizer or a baseline (the original's evaluate.py, fixed).

    python experiments/evaluate.py --problem=mnist --optimizer=L2L --path=runs/mnist
    python experiments/evaluate.py --problem=mnist --optimizer=Adam --learning_rate=0.03

Each epoch re-samples the problem (initialisation, constants, batches) and starts every
optimizer from fresh state, which the original did not do. With the same --seed every
optimizer sees the same problems and batches. --output writes the per-step losses
(epochs x (num_steps + 1)) to a .csv or .json file for plots.

Which loss: by default the paper's protocol, in which the MNIST optimizee trains on
minibatches of the test split and the losses are those minibatches' losses (training
losses). With --split=train it trains on the train split instead, and --heldout_steps=100,1000
adds, at those steps, the loss and accuracy of the model on all 10,000 images of the test
split, on which it never trained (held-out numbers).

    python experiments/evaluate.py --problem=mnist --optimizer=Adam --learning_rate=0.03 \
        --split=train --num_steps=1000 --heldout_steps=100,1000
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import json
import time

import numpy as np
import tensorflow as tf
from absl import flags

from l2l_tf import cli, meta, presets

flags.DEFINE_enum("optimizer", "L2L", ["L2L", *presets.BASELINES], "Optimizer to evaluate.")
flags.DEFINE_string("path", None, "Directory of the learned optimizer's nets (for L2L).")
flags.DEFINE_float("learning_rate", 0.001, "Learning rate of a baseline optimizer.", lower_bound=0)
flags.DEFINE_integer("num_epochs", 100, "Number of evaluation epochs.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the sampled problems and batches.")
flags.DEFINE_string("problem", "simple", f"One of {', '.join(presets.PROBLEMS)}.")
flags.DEFINE_integer("num_steps", 100, "Optimizee steps per epoch.", lower_bound=1)
flags.DEFINE_integer("unroll_length", 20, "Steps per compiled unroll (no effect on results).",
                     lower_bound=1)
flags.DEFINE_enum("preset", "original", sorted(presets.PRESETS),
                  "Constants of the nets (k, scale; presets.PRESETS).")
flags.DEFINE_enum("split", "test", ["test", "train"], "Split the optimizee's minibatches come "
                  "from: 'test' is the paper's protocol; 'train' allows --heldout_steps.")
flags.DEFINE_list("heldout_steps", [], "Steps at which to evaluate the model on all of the test "
                  "split (needs --split=train; multiples of --unroll_length).")
flags.DEFINE_string("output", None, "Write per-step losses to this .csv or .json file.")
FLAGS = flags.FLAGS


def check_flags():
    if FLAGS.problem not in presets.PROBLEMS:
        raise cli.UsageError(
            f"unknown --problem={FLAGS.problem!r}: use one of {', '.join(presets.PROBLEMS)}."
        )
    if FLAGS.optimizer == "L2L" and FLAGS.path is None:
        raise cli.UsageError("--optimizer=L2L needs --path: the directory train.py saved to.")
    if FLAGS.num_steps % FLAGS.unroll_length:
        raise cli.UsageError(
            f"--unroll_length={FLAGS.unroll_length} does not divide --num_steps="
            f"{FLAGS.num_steps}: choose a divisor (or 1)."
        )
    if FLAGS.output is not None and not FLAGS.output.endswith((".csv", ".json")):
        raise cli.UsageError(f"--output={FLAGS.output!r} must end in .csv or .json.")
    return heldout_steps()


def heldout_steps():
    """The --heldout_steps as sorted integers, checked."""
    try:
        steps = sorted({int(step) for step in FLAGS.heldout_steps})
    except ValueError:
        raise cli.UsageError(f"--heldout_steps={','.join(FLAGS.heldout_steps)} must be "
                             "integers.") from None
    if steps and FLAGS.split != "train":
        raise cli.UsageError("--heldout_steps needs --split=train: with the paper's protocol "
                             "the optimizee trains on the test split, so nothing is held out.")
    bad = [s for s in steps if s < 1 or s > FLAGS.num_steps or s % FLAGS.unroll_length]
    if bad:
        raise cli.UsageError(f"--heldout_steps {bad} must be multiples of --unroll_length="
                             f"{FLAGS.unroll_length} in 1..--num_steps={FLAGS.num_steps}.")
    return steps


def build_optimizer(heldout):
    """`(meta_optimizer, problem, net_assignments)` for the chosen optimizer."""
    split = {"mode": FLAGS.split, "heldout_split": "test" if heldout else None}
    with cli.configuration_errors():
        if FLAGS.optimizer == "L2L":
            problem, net_config, net_assignments = presets.get_config(
                FLAGS.problem, path=FLAGS.path, preset=FLAGS.preset, **split)
            return meta.MetaOptimizer(**net_config), problem, net_assignments
        problem, _, _ = presets.get_config(FLAGS.problem, preset=FLAGS.preset, **split)
        nets = presets.baseline_nets(FLAGS.optimizer, FLAGS.learning_rate)
        return meta.MetaOptimizer(**nets), problem, None


def evaluate(run, problem, num_unrolls, steps):
    """`(losses [epochs, num_steps + 1], heldout [epochs, len(steps), (loss, accuracy)])`."""
    heldout_metrics = tf.function(problem.heldout) if steps else None
    curves, heldout = [], []
    for _ in range(FLAGS.num_epochs):
        found = {}

        def after_unroll(step):
            if step in steps:
                found[step] = [float(v) for v in heldout_metrics([x.read_value() for x in run.x])]

        curves.append(meta.run_epoch(run, num_unrolls, train=False, after_unroll=after_unroll))
        heldout.append([found.get(step, [np.nan, np.nan]) for step in steps])
    return np.stack(curves), np.array(heldout).reshape(FLAGS.num_epochs, len(steps), 2)


def write_losses(path, losses, steps, heldout):
    """The training minibatch losses of every epoch and step, and the held-out (test split)
    loss and accuracy at `steps`; JSON, or CSV with empty held-out cells at other steps."""
    if path.endswith(".json"):
        record = {"optimizer": FLAGS.optimizer, "problem": FLAGS.problem, "seed": FLAGS.seed,
                  "learning_rate": FLAGS.learning_rate if FLAGS.optimizer != "L2L" else None,
                  "path": FLAGS.path, "split": FLAGS.split, "losses": losses.tolist(),
                  "heldout_steps": steps, "heldout_loss": heldout[..., 0].tolist(),
                  "heldout_accuracy": heldout[..., 1].tolist()}
        text = json.dumps(record)
    else:
        rows = ["epoch,step,loss,heldout_loss,heldout_accuracy"]
        for epoch, curve in enumerate(losses):
            for step, loss in enumerate(curve.tolist()):
                cells = ["", ""]
                if step in steps:
                    cells = [repr(float(v)) for v in heldout[epoch, steps.index(step)]]
                rows.append(f"{epoch},{step},{loss!r},{cells[0]},{cells[1]}")
        text = "\n".join(rows) + "\n"
    cli.write_text_atomically(path, text)


def mean_and_error(values):
    return np.mean(values), np.std(values) / np.sqrt(len(values))


def main(argv):
    steps = check_flags()
    optimizer, problem, net_assignments = build_optimizer(heldout=bool(steps))
    run = optimizer.meta_loss(problem, FLAGS.unroll_length, net_assignments=net_assignments,
                              seed=FLAGS.seed)
    num_unrolls = FLAGS.num_steps // FLAGS.unroll_length
    start = time.time()
    losses, heldout = evaluate(run, problem, num_unrolls, steps)
    elapsed = time.time() - start
    print(f"Epoch {FLAGS.num_epochs}\nLog Mean Final Error: {np.log10(np.mean(losses[:, -1])):.2f}"
          f"\nMean epoch time: {elapsed / FLAGS.num_epochs:.2f} s"
          f"\nMean final loss: {np.mean(losses[:, -1]):.4g} (training minibatch, {FLAGS.split} "
          f"split)\nSum of the first {FLAGS.num_steps} losses (steps 0..{FLAGS.num_steps - 1}): "
          f"{np.mean(losses[:, :-1].sum(1)):.4g}")
    for i, step in enumerate(steps):
        loss, loss_error = mean_and_error(heldout[:, i, 0])
        accuracy, accuracy_error = mean_and_error(heldout[:, i, 1])
        print(f"Held-out (all of the test split) at step {step}: loss {loss:.4g} ± "
              f"{loss_error:.2g}, accuracy {accuracy:.4f} ± {accuracy_error:.2g}")
    if FLAGS.output is not None:
        write_losses(FLAGS.output, losses, steps, heldout)


if __name__ == "__main__":
    cli.run(main)
