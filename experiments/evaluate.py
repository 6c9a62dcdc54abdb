"""Evaluates a learned optimizer or a baseline (the original's evaluate.py, fixed).

    python experiments/evaluate.py --problem=mnist --optimizer=L2L --path=runs/mnist
    python experiments/evaluate.py --problem=mnist --optimizer=Adam --learning_rate=0.03

Each epoch re-samples the problem (initialisation, constants, batches) and starts every
optimizer from fresh state, which the original did not do. With the same --seed every
optimizer sees the same problems and batches. --output writes the per-step losses
(epochs x (num_steps + 1)) to a .csv or .json file for plots.
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import json
import time

import numpy as np
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


def build_optimizer():
    """`(meta_optimizer, problem, net_assignments)` for the chosen optimizer."""
    with cli.configuration_errors():
        if FLAGS.optimizer == "L2L":
            problem, net_config, net_assignments = presets.get_config(
                FLAGS.problem, path=FLAGS.path, preset=FLAGS.preset)
            return meta.MetaOptimizer(**net_config), problem, net_assignments
        # Baselines are evaluated on the test split, like a loaded L2L optimizer.
        problem, _, _ = presets.get_config(FLAGS.problem, preset=FLAGS.preset, mode="test")
        nets = presets.baseline_nets(FLAGS.optimizer, FLAGS.learning_rate)
        return meta.MetaOptimizer(**nets), problem, None


def write_losses(path, losses):
    if path.endswith(".json"):
        record = {"optimizer": FLAGS.optimizer, "problem": FLAGS.problem, "seed": FLAGS.seed,
                  "learning_rate": FLAGS.learning_rate if FLAGS.optimizer != "L2L" else None,
                  "path": FLAGS.path, "losses": losses.tolist()}
        text = json.dumps(record)
    else:
        rows = ["epoch,step,loss"] + [
            f"{epoch},{step},{loss!r}" for epoch, curve in enumerate(losses)
            for step, loss in enumerate(curve.tolist())
        ]
        text = "\n".join(rows) + "\n"
    cli.write_text_atomically(path, text)


def main(argv):
    check_flags()
    optimizer, problem, net_assignments = build_optimizer()
    run = optimizer.meta_loss(problem, FLAGS.unroll_length, net_assignments=net_assignments,
                              seed=FLAGS.seed)
    num_unrolls = FLAGS.num_steps // FLAGS.unroll_length
    curves, start = [], time.time()
    for _ in range(FLAGS.num_epochs):
        curves.append(meta.run_epoch(run, num_unrolls, train=False))
    losses = np.stack(curves)
    elapsed = time.time() - start
    print(f"Epoch {FLAGS.num_epochs}\nLog Mean Final Error: {np.log10(np.mean(losses[:, -1])):.2f}"
          f"\nMean epoch time: {elapsed / FLAGS.num_epochs:.2f} s"
          f"\nMean final loss: {np.mean(losses[:, -1]):.4g}"
          f"\nSum of the first {FLAGS.num_steps} losses (steps 0..{FLAGS.num_steps - 1}): "
          f"{np.mean(losses[:, :-1].sum(1)):.4g}")
    if FLAGS.output is not None:
        write_losses(FLAGS.output, losses)


if __name__ == "__main__":
    cli.run(main)
