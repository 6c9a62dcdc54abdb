"""Meta-trains a learned optimizer (the original's train.py, with resuming and summaries).

    python experiments/train.py --problem=mnist --save_path=runs/mnist

Every epoch resets the problem and runs num_steps / unroll_length unrolls, each followed by
one meta-step. Every log_period epochs it prints the original's "Log Mean Final Error"
(log10 of the mean final loss) and the mean epoch time; every evaluation_period epochs it
evaluates without meta-steps and writes the nets to save_path when they are the best so
far. The checkpoint in save_path/checkpoint (nets, meta-Adam slots, epoch, RNG state) is
written every checkpoint_period epochs; --resume continues from it, or starts afresh when
there is none yet, so a supervisor can repeat the same command after every preemption.
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from l2l_tf import cli, meta, presets, problems

flags.DEFINE_string("save_path", None, "Directory for the nets, checkpoint and summaries.")
flags.DEFINE_integer("num_epochs", 10000, "Number of training epochs.", lower_bound=1)
flags.DEFINE_integer("log_period", 100, "Log every this many epochs.", lower_bound=1)
flags.DEFINE_integer("evaluation_period", 1000, "Evaluate every this many epochs.", lower_bound=1)
flags.DEFINE_integer("evaluation_epochs", 20, "Epochs per evaluation.", lower_bound=1)
flags.DEFINE_string("problem", "simple", f"One of {', '.join(presets.PROBLEMS)}.")
flags.DEFINE_integer("num_steps", 100, "Optimizee steps per epoch.", lower_bound=1)
flags.DEFINE_integer("unroll_length", 20, "Steps per truncated unroll.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.001, "Meta-optimizer (Adam) learning rate.", lower_bound=0)
flags.DEFINE_boolean("second_derivatives", False, "Backpropagate through optimizee gradients.")
flags.DEFINE_integer("seed", 0, "Seed of the nets' initial weights and the problems.")
flags.DEFINE_enum("preset", "original", sorted(presets.PRESETS),
                  "Constants of the nets (k, scale; presets.PRESETS).")
flags.DEFINE_boolean("resume", False, "Continue from the checkpoint in save_path if there is "
                     "one, else start there afresh: one command line for the first start and "
                     "every restart. Without it, a save_path holding a run is refused.")
flags.DEFINE_string("init_path", None, "Start from the nets saved in this directory (e.g. "
                    "l2l_tf/pretrained/mnist) instead of fresh ones: fine-tuning.")
flags.DEFINE_integer("checkpoint_period", 100, "Checkpoint every this many epochs.", lower_bound=1)
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy for meta-training: each replica unrolls its own "
                  "samples and the meta-gradient is all-reduced.")
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu (TPUClusterResolver).")
flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into this many logical devices "
                     "(to try --strategy=mirrored without accelerators).", lower_bound=0)
flags.DEFINE_integer("samples", 1, "Problem samples unrolled together per meta-step (a "
                     "meta-batch); the meta-loss is their mean.", lower_bound=1)
flags.DEFINE_boolean("jit_compile", False, "Compile each unroll (each replica's, under a "
                     "strategy) with XLA. Slower on CPU; see BUILD_NOTES.md.")
flags.DEFINE_boolean("recompute", False,
                     "Recompute the nets' activations in the backward pass: bounds memory.")
flags.DEFINE_boolean("log_loss", False, "Meta-loss: the sum of log losses instead of the sum "
                     "of losses (for long horizons and problems of different loss scales).")
flags.DEFINE_boolean("graph_loop", False, "Run each unroll's steps in a tf.while_loop: traced "
                     "once whatever --unroll_length, for unrolls of thousands of steps.")
flags.DEFINE_enum("meta_objective", "train", ["train", "validation"],
                  "What the meta-loss sums: the optimizee's training minibatch losses (the "
                  "paper's) or its losses on minibatches of held-out examples, the train "
                  "split's last 10,000 images, which it then does not train on (mnist, "
                  f"{', '.join(presets.MNIST_KERAS_FAMILIES)}).")
flags.DEFINE_boolean("deterministic", False,
                     "Turn on TensorFlow's op determinism: the same seed gives the same bits.")
FLAGS = flags.FLAGS

CHECKPOINT_DIR = "checkpoint"


def output_path():
    """Where this process writes: --save_path, or for a multi-worker worker that is not the
    chief, <save_path>/worker_<index>. Every worker must write its own checkpoints (they hold
    its replicas' random generators); the chief's nets are the run's."""
    if FLAGS.save_path is None or FLAGS.strategy != "multi_worker":
        return FLAGS.save_path
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    has_chief = "chief" in config.get("cluster", {})
    if task.get("type", "chief") == "chief" or (not has_chief and task.get("index", 0) == 0):
        return FLAGS.save_path
    return os.path.join(FLAGS.save_path, f"{task['type']}_{task['index']}")


def check_flags(save_path):
    if FLAGS.problem not in presets.PROBLEMS:
        raise cli.UsageError(
            f"unknown --problem={FLAGS.problem!r}: use one of {', '.join(presets.PROBLEMS)}."
        )
    if FLAGS.num_steps % FLAGS.unroll_length:
        raise cli.UsageError(
            f"--unroll_length={FLAGS.unroll_length} does not divide --num_steps="
            f"{FLAGS.num_steps}: choose values where num_steps is a multiple of unroll_length."
        )
    if FLAGS.init_path is not None and not os.path.isdir(FLAGS.init_path):
        raise cli.UsageError(
            f"--init_path={FLAGS.init_path!r} is not a directory: give one that holds saved nets "
            "(a train.py save_path or l2l_tf/pretrained/<name>)."
        )
    if save_path is None:
        if FLAGS.resume:
            raise cli.UsageError("--resume needs --save_path: the run to continue.")
        return
    if os.path.exists(save_path) and not os.path.isdir(save_path):
        raise cli.UsageError(f"--save_path={save_path!r} is a file: give a directory.")
    has_checkpoint = tf.train.latest_checkpoint(os.path.join(save_path, CHECKPOINT_DIR))
    # A run killed before its first checkpoint left only flags and summaries: nothing to lose.
    # With --resume, one command line serves the first start and every restart.
    holds_run = has_checkpoint or any(f.endswith(".npz") for f in os.listdir(save_path)) \
        if os.path.isdir(save_path) else False
    if not FLAGS.resume and holds_run:
        raise cli.UsageError(
            f"--save_path={save_path!r} already holds a run: pass --resume to continue "
            "it, or choose a new directory."
        )


def make_strategy():
    """The tf.distribute strategy named by --strategy (None for the default)."""
    # --logical_cpus was applied by quiet_tensorflow, before the runtime started.
    if FLAGS.strategy == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
            [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if FLAGS.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # cluster from TF_CONFIG
    if FLAGS.strategy == "tpu":
        if FLAGS.tpu is None:
            raise cli.UsageError("--strategy=tpu needs --tpu=ADDRESS (or 'local').")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=FLAGS.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return None


def run_flags():
    """The flags that must match when a run is resumed."""
    names = ["problem", "num_steps", "unroll_length", "learning_rate", "second_derivatives",
             "seed", "preset", "samples", "strategy", "init_path", "log_loss", "meta_objective"]
    return {name: FLAGS[name].value for name in names}


def check_resumed_flags(save_path):
    path = os.path.join(save_path, "flags.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    changed = {k: (v, run_flags()[k]) for k, v in saved.items() if run_flags().get(k) != v}
    if changed:
        raise cli.UsageError(
            "--resume with flags that differ from the run's: "
            + ", ".join(f"--{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            + ": resume with the run's flags or start a new save_path."
        )


def log_mean_final_error(losses):
    return float(np.log10(np.mean(losses)))


def main(argv):
    save_path = output_path()
    check_flags(save_path)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    if FLAGS.resume:
        check_resumed_flags(save_path)
    strategy = make_strategy()
    with cli.configuration_errors():
        validation_size = presets.VALIDATION_SIZE if FLAGS.meta_objective == "validation" else 0
        problem, net_config, net_assignments = presets.get_config(
            FLAGS.problem, path=FLAGS.init_path, preset=FLAGS.preset, mode="train",
            validation_size=validation_size)
        with (strategy or tf.distribute.get_strategy()).scope():  # mirrored nets
            optimizer = meta.MetaOptimizer(seed=FLAGS.seed, **net_config)
        training = optimizer.meta_minimize(
            problem, FLAGS.unroll_length, learning_rate=FLAGS.learning_rate,
            net_assignments=net_assignments, second_derivatives=FLAGS.second_derivatives,
            seed=FLAGS.seed, jit_compile=FLAGS.jit_compile, recompute=FLAGS.recompute,
            samples=FLAGS.samples, strategy=strategy, log_loss=FLAGS.log_loss,
            graph_loop=FLAGS.graph_loop, meta_objective=FLAGS.meta_objective,
        )
        evaluation = optimizer.meta_loss(problem, FLAGS.unroll_length,
                                         net_assignments=net_assignments, seed=FLAGS.seed + 1,
                                         jit_compile=FLAGS.jit_compile,
                                         graph_loop=FLAGS.graph_loop,
                                         meta_objective=FLAGS.meta_objective)
    members = len(problem.members) if isinstance(problem, problems.Family) else 1
    if FLAGS.evaluation_epochs % members:
        raise cli.UsageError(
            f"--evaluation_epochs={FLAGS.evaluation_epochs} must be a multiple of the "
            f"{members} members of --problem={FLAGS.problem}, so that each is evaluated "
            "equally often.")
    num_unrolls = FLAGS.num_steps // FLAGS.unroll_length

    epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
    best_evaluation = tf.Variable(np.inf, dtype=tf.float64, name="best_evaluation")
    manager = writer = None
    if save_path is not None:
        os.makedirs(save_path, exist_ok=True)
        family = {"member": training.member} if members > 1 else {}
        checkpoint = tf.train.Checkpoint(
            weights=optimizer.weights, meta_optimizer=optimizer.meta_optimizer,
            rngs=training.rngs, evaluation_rngs=evaluation.rngs, epoch=epoch,
            best_evaluation=best_evaluation,
            skipped_steps=training.skipped_steps, **family,
        )
        manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(save_path, CHECKPOINT_DIR), max_to_keep=2
        )
        for name in os.listdir(save_path):  # left by a writer killed before its rename
            if name.startswith(cli.TEMPORARY_PREFIX):
                os.remove(os.path.join(save_path, name))
        if FLAGS.resume and manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            print(f"Resumed from {manager.latest_checkpoint} at epoch {int(epoch.numpy())}.")
        else:
            cli.write_text_atomically(os.path.join(save_path, "flags.json"),
                                      json.dumps(run_flags(), indent=2))
            if FLAGS.resume:
                print(f"--resume: no checkpoint in {save_path} yet; starting from epoch 0.")
        writer = tf.summary.create_file_writer(os.path.join(save_path, "tensorboard"))

    progress = keras.utils.Progbar(FLAGS.num_epochs, verbose=1 if FLAGS.progress else 0,
                                   stateful_metrics=["log_final_error"])
    progress.update(int(epoch.numpy()))
    final_losses, epoch_times = [], []
    while int(epoch.numpy()) < FLAGS.num_epochs:
        start = time.time()
        skipped_before = int(training.skipped_steps.numpy())
        losses = meta.run_epoch(training, num_unrolls, train=True)
        epoch_times.append(time.time() - start)
        epoch.assign_add(1)
        done = int(epoch.numpy())
        if int(training.skipped_steps.numpy()) > skipped_before:
            print(f"\nEpoch {done}: non-finite meta-loss or meta-gradient; meta-step skipped "
                  f"({int(training.skipped_steps.numpy())} so far), problem re-sampled.",
                  flush=True)
        else:
            final_losses.append(losses[-1])
            progress.update(done, [("log_final_error", np.log10(losses[-1]))])
            if writer is not None:
                with writer.as_default(step=done):
                    tf.summary.scalar("final_loss", losses[-1])
                    tf.summary.scalar("mean_loss", float(np.mean(losses[1:])))

        if done % FLAGS.log_period == 0 and final_losses:
            print(f"\nEpoch {done}\nLog Mean Final Error: {log_mean_final_error(final_losses):.2f}"
                  f"\nMean epoch time: {np.mean(epoch_times):.2f} s", flush=True)
            final_losses, epoch_times = [], []

        if done % FLAGS.evaluation_period == 0:
            # A family's long runs end in single minibatch losses too noisy to pick nets by:
            # each run's final loss is the mean over its last tenth, and as the members have
            # losses of different scales, the score is the geometric mean over members of
            # each member's mean final loss (the members come in turn).
            window = max(1, FLAGS.num_steps // 10) if members > 1 else 1
            finals = [np.mean(meta.run_epoch(evaluation, num_unrolls, train=False)[-window:])
                      for _ in range(FLAGS.evaluation_epochs)]
            mean_final = float(np.exp(np.mean(np.log(
                np.mean(np.reshape(finals, [-1, members]), axis=0)))))
            print(f"EVALUATION\nLog Mean Final Error: {np.log10(mean_final):.2f}", flush=True)
            if writer is not None:
                with writer.as_default(step=done):
                    tf.summary.scalar("evaluation/final_loss", mean_final)
            if save_path is not None and mean_final < best_evaluation.numpy():
                best_evaluation.assign(mean_final)
                optimizer.save(save_path)
                print(f"Saving optimizer to {save_path}...", flush=True)

        if manager is not None and (done % FLAGS.checkpoint_period == 0 or done == FLAGS.num_epochs):
            manager.save(checkpoint_number=done)
    if save_path is not None and not np.isfinite(best_evaluation.numpy()):
        # No evaluation ran (a short run): keep the final nets rather than nothing.
        optimizer.save(save_path)


if __name__ == "__main__":
    cli.run(main)
