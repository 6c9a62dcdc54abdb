"""How well can the default's kind of update do in the paper's 100-step setting?

    python experiments/schedule_ceiling.py --output=experiments/results/schedule_ceiling.md

The default optimizer (`networks.TensorwiseLSTM`) moves every tensor along Adam's direction
plus a weighted normalised gradient; its LSTM picks two numbers per tensor and step, the step
size and the gradient weight. Here a free table takes the LSTM's place: one step size and one
gradient weight per tensor of the paper's MLP and per time segment (--segments of the 100
steps). The table is meta-trained directly on the paper's metric, the sum of the losses of the
first 100 steps, on the train split. It is then scored like `reproduce.py` scores an
optimizer: 100 fresh runs on test-split batches, seed --seed. The table starts at Adam with
rate --start_rate, the rate `reproduce.py`'s grid tuned for both configurations
(`experiments/results/mnist_tuning.json`). The question is one of design: how close can a
tensorwise net come to the paper-setting targets of issue 14? The answer is an estimate,
not a bound. An LSTM can adapt its schedule to each run, and the table cannot. Meta-gradients
through 100 steps can also mislead: on the ReLU MLP the table ended worse than where it
started, and a per-tensor LSTM beat it (BUILD_NOTES.md, "Session 13").
Each (configuration, step-size cap) runs separately. Results are cached in
`<output>_runs.json`, so the same command resumes where it stopped (losing at most the run in
progress). --max_rates caps the step size: "none", or a rate such as 0.03 (the shipped
default's bound, `max_factor` 30 x its rate 0.001).

--directions asks whether other per-coordinate directions than the default's two would lower
the ceiling: each is added to Adam's step with its own bounded weight per tensor and segment,
as the default adds the normalised gradient, so that the cap still bounds the step.
--free_mix unbounds the weights, Adam's step's too (from 1): a cap then bounds the rate and
not the step, which the mix can scale (BUILD_NOTES.md, "Session 61").
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import flags

from l2l_tf import cli, meta, networks, problems

CONFIGURATIONS = {"base": "sigmoid", "relu": "relu"}  # reproduce.py's, by activation
HORIZON = 100
# Per-coordinate directions a table can add to Adam's step: the default's normalised gradient,
# Adam's direction with a slower momentum (beta1 0.99), and the sign of Adam's momentum.
DIRECTIONS = ("gradient", "slow", "sign")
SLOW_BETA1 = 0.99

flags.DEFINE_list("configs", list(CONFIGURATIONS), "Configurations of reproduce.py to run.")
flags.DEFINE_list("max_rates", ["none", "0.03"], "Caps on the step size: none, or a rate.")
flags.DEFINE_integer("segments", 10, "Time segments of the 100 steps, each with its own "
                     "step size and gradient weight per tensor.", lower_bound=1)
flags.DEFINE_float("start_rate", 0.03, "Adam's rate the table starts from.", lower_bound=0.0)
flags.DEFINE_integer("meta_epochs", 2000, "Meta-training runs (one 100-step unroll each).",
                     lower_bound=1)
flags.DEFINE_float("meta_learning_rate", 0.005, "Meta-Adam's learning rate.", lower_bound=0.0)
flags.DEFINE_integer("samples", 1, "Runs averaged per meta-step (less noisy meta-gradients).",
                     lower_bound=1)
flags.DEFINE_integer("num_runs", 100, "Evaluation runs.", lower_bound=1)
flags.DEFINE_list("directions", ["gradient"], "Directions added to Adam's step, each with a "
                  f"weight per tensor and segment: some of {', '.join(DIRECTIONS)}.")
flags.DEFINE_bool("free_mix", False, "Unbounded weights, Adam's step's too (from 1), instead of "
                  "Adam's step plus tanh-bounded weights of the others.")
flags.DEFINE_integer("seed", 0, "Evaluation seed; meta-training uses seed + 7.")
flags.DEFINE_string("output", None, "Markdown file for the table (.md).", required=True)
FLAGS = flags.FLAGS


class ScheduleTable(networks.Net):
    """TensorwiseLSTM's update with the LSTM replaced by a table indexed by tensor and time.

    Update of a tensor at step t: `-rate * exp(log_factor[i, s]) * (adam_step + sum_k tanh(
    weight[i, s, k]) * direction_k)`, i the tensor (found by its shape, so the problem's
    shapes must differ), s the segment of t, k over `directions`. Adam's step and the
    normalised gradient come from `TensorwiseLSTM.features`, so with `directions=("gradient",)`
    the update is the default's. With `free_mix` it is `-rate * exp(log_factor[i, s]) *
    sum_k weight[i, s, k] * direction_k`, k over Adam's step and `directions`.
    """

    def __init__(self, shapes, segments, start_rate, max_rate=None, rate=1e-3,
                 directions=("gradient",), free_mix=False):
        self.shapes = [tuple(shape) for shape in shapes]
        if len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"tensors are found by shape; these repeat: {self.shapes}")
        self.segments = segments
        self.start_rate = start_rate
        self.max_rate = max_rate
        self.rate = rate
        self.directions = tuple(directions)
        self.free_mix = free_mix
        self.tensorwise = networks.TensorwiseLSTM()  # its Adam part (features use no rate)
        self.slow = networks.TensorwiseLSTM(beta1=SLOW_BETA1)  # Adam's step, slower momentum

    def weighed(self):
        """The directions that have a weight in the table, in the order of its last axis."""
        return ("adam",) * self.free_mix + self.directions

    def weight_shapes(self):
        shape = (len(self.shapes), self.segments)
        return {"table": {"log_factor": shape, "weights": shape + (len(self.weighed()),)}}

    def initial_weights(self, seed=None):
        shape = (len(self.shapes), self.segments)
        start = np.zeros(shape + (len(self.weighed()),), np.float32)
        start[..., 0] = float(self.free_mix)  # Adam's step at the start rate either way
        return {"table": {"log_factor": tf.fill(shape, math.log(self.start_rate / self.rate)),
                          "weights": tf.constant(start)}}

    def state_shapes(self, param_shape):
        return (tuple(param_shape), tuple(param_shape), (1,), tuple(param_shape))

    def log_factor(self, table):
        """The table's log step-size factors, capped at `max_rate`."""
        if self.max_rate is None:
            return table
        return tf.minimum(table, math.log(self.max_rate / self.rate))

    def step(self, weights, gradient, state):
        m, v, t, slow = state
        t = t + 1.0
        beta1, beta2 = self.tensorwise.beta1, self.tensorwise.beta2
        m = beta1 * m + (1.0 - beta1) * gradient
        v = beta2 * v + (1.0 - beta2) * tf.square(gradient)
        slow = SLOW_BETA1 * slow + (1.0 - SLOW_BETA1) * gradient
        _, adam_step, normalised = self.tensorwise.features(gradient, m, v, t[0])
        directions = {"adam": adam_step, "gradient": normalised, "sign": tf.sign(m),
                      "slow": self.slow.features(gradient, slow, v, t[0])[1]}
        index = self.shapes.index(tuple(gradient.shape))
        segment = tf.cast(tf.minimum(self.segments - 1.0,
                                     tf.floor((t[0] - 1.0) * self.segments / HORIZON)), tf.int32)
        log_factor = self.log_factor(weights["table"]["log_factor"])[index, segment]
        mix = weights["table"]["weights"][index, segment]
        terms = [(mix[k] if self.free_mix else tf.tanh(mix[k])) * directions[name]
                 for k, name in enumerate(self.weighed())]
        direction = tf.add_n(terms if self.free_mix else [adam_step] + terms)
        update = -self.rate * tf.exp(log_factor) * direction
        return update, (m, v, t, slow)

    def get_config(self):
        return {"shapes": self.shapes, "segments": self.segments,
                "start_rate": self.start_rate, "max_rate": self.max_rate,
                "directions": self.directions, "free_mix": self.free_mix}


def scores(optimizer, problem):
    """loss@100 and sum100 (the losses of steps 0..99), mean and standard error over runs."""
    run = optimizer.meta_loss(problem, 20, seed=FLAGS.seed)
    losses = np.stack([meta.run_epoch(run, HORIZON // 20, train=False)
                       for _ in range(FLAGS.num_runs)])
    metrics = {"loss@100": losses[:, HORIZON], "sum100": losses[:, :HORIZON].sum(1)}
    return {k: [float(np.mean(v)), float(np.std(v) / np.sqrt(len(v)))]
            for k, v in metrics.items()}


def run(config, max_rate):
    activation = CONFIGURATIONS[config]
    train_problem = problems.mnist(activation=activation, mode="train")
    test_problem = problems.mnist(activation=activation, mode="test")
    shapes = [tuple(param.shape) for param in train_problem.params]
    net = ScheduleTable(shapes, FLAGS.segments, FLAGS.start_rate, max_rate,
                        directions=FLAGS.directions, free_mix=FLAGS.free_mix)
    optimizer = meta.MetaOptimizer(schedule=net)
    start = scores(optimizer, test_problem)
    began = time.perf_counter()
    training = optimizer.meta_minimize(train_problem, HORIZON, FLAGS.meta_learning_rate,
                                       seed=FLAGS.seed + 7, graph_loop=True,
                                       samples=FLAGS.samples)
    for _ in range(FLAGS.meta_epochs):
        meta.run_epoch(training, 1, train=True)
    table = optimizer.weights["schedule"]["table"]
    rates = net.rate * np.exp(net.log_factor(table["log_factor"]).numpy())
    mix = table["weights"].numpy() if FLAGS.free_mix else np.tanh(table["weights"].numpy())
    return {"start": start, "learned": scores(optimizer, test_problem),
            "seconds": time.perf_counter() - began,
            "rates": [[float(f"{x:.3g}") for x in row] for row in rates],
            **{f"{name}_weights": [[round(float(x), 2) + 0.0 for x in row]
                                   for row in mix[..., k]]
               for k, name in enumerate(net.weighed())}}


def mix_flags():
    """--directions and --free_mix as given, or nothing for the default's form (so that the
    keys and commands of the tables made before the flags existed stay theirs)."""
    if FLAGS.directions == ["gradient"] and not FLAGS.free_mix:
        return ""
    return f"--directions={','.join(FLAGS.directions)}" + " --free_mix" * FLAGS.free_mix


def run_key(config, max_rate):
    return (f"{config}|cap {max_rate}|segments {FLAGS.segments}|start {FLAGS.start_rate}|"
            f"epochs {FLAGS.meta_epochs}|meta lr {FLAGS.meta_learning_rate}|"
            f"samples {FLAGS.samples}|{mix_flags() + '|' if mix_flags() else ''}"
            f"runs {FLAGS.num_runs}|seed {FLAGS.seed}")


def report(results, keys):
    def cell(pair):
        return f"{pair[0]:.4g} ± {pair[1]:.2g}"

    lines = [
        "# A free per-tensor step schedule in the paper's setting",
        "",
        "Training minibatch loss on test-split batches (the paper's protocol, as reproduce.py), "
        f"{FLAGS.num_runs} runs, seed {FLAGS.seed}; mean ± standard error. The table of step "
        f"sizes ({FLAGS.segments} segments of 100 steps, one row per tensor: W1, b1, W2, b2) was "
        f"meta-trained for {FLAGS.meta_epochs} meta-steps of {FLAGS.samples} run(s) each on the "
        "train split, meta-Adam rate "
        f"{FLAGS.meta_learning_rate}, from Adam at rate {FLAGS.start_rate}.",
        "",
        f"Command: `python experiments/schedule_ceiling.py --configs={','.join(FLAGS.configs)} "
        f"--max_rates={','.join(FLAGS.max_rates)} --segments={FLAGS.segments} "
        f"--start_rate={FLAGS.start_rate:g} --meta_epochs={FLAGS.meta_epochs} "
        f"--meta_learning_rate={FLAGS.meta_learning_rate:g} --samples={FLAGS.samples} "
        f"--num_runs={FLAGS.num_runs} {mix_flags() + ' ' if mix_flags() else ''}"
        f"--seed={FLAGS.seed} --output={FLAGS.output}`; meta-training wall time per row below.",
        "",
        "| configuration | step-size cap | start: Adam loss@100 | start: Adam sum100 | "
        "table loss@100 | table sum100 | meta-training (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (config, cap), key in keys:
        r = results[key]
        lines.append(f"| {config} | {cap} | {cell(r['start']['loss@100'])} | "
                     f"{cell(r['start']['sum100'])} | {cell(r['learned']['loss@100'])} | "
                     f"{cell(r['learned']['sum100'])} | {r['seconds']:.0f} |")
    weighed = ("adam",) * FLAGS.free_mix + tuple(FLAGS.directions)
    lines += ["", f"Learned step sizes and {', '.join(weighed)} weights per tensor, one number "
              "per segment:", ""]
    for (config, cap), key in keys:
        lines.append(f"- {config}, cap {cap}:")
        for i, (tensor, rates) in enumerate(zip(("W1", "b1", "W2", "b2"),
                                                results[key]["rates"])):
            lines.append(f"  - {tensor}: rates {' '.join(f'{x:g}' for x in rates)}" + "".join(
                f"; {name} weights {' '.join(f'{x:g}' for x in results[key][name + '_weights'][i])}"
                for name in weighed))
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    unknown = sorted(set(FLAGS.configs) - set(CONFIGURATIONS))
    if unknown:
        raise cli.UsageError(f"unknown --configs {unknown}: use some of "
                             f"{', '.join(CONFIGURATIONS)}.")
    if not FLAGS.output.endswith(".md"):
        raise cli.UsageError(f"--output={FLAGS.output!r} must end in .md.")
    unknown = sorted(set(FLAGS.directions) - set(DIRECTIONS))
    if unknown or len(set(FLAGS.directions)) != len(FLAGS.directions):
        raise cli.UsageError(f"--directions={','.join(FLAGS.directions)}: give each of "
                             f"{', '.join(DIRECTIONS)} at most once.")
    caps = []
    for text in FLAGS.max_rates:
        try:
            caps.append(None if text == "none" else float(text))
        except ValueError:
            raise cli.UsageError(f"--max_rates: {text!r} is neither none nor a rate.") from None
    cache = FLAGS.output[:-3] + "_runs.json"
    results = {}
    if os.path.exists(cache):
        with open(cache) as f:
            results = json.load(f)
    keys = []
    for config in FLAGS.configs:
        for cap in caps:
            key = run_key(config, cap)
            keys.append(((config, "none" if cap is None else f"{cap:g}"), key))
            if key not in results:
                results[key] = run(config, cap)
                cli.write_text_atomically(cache, json.dumps(results, indent=1))
            r = results[key]["learned"]
            print(f"{config} cap {cap}: loss@100 {r['loss@100'][0]:.4f}, "
                  f"sum100 {r['sum100'][0]:.2f}", flush=True)
    cli.write_text_atomically(FLAGS.output, report(results, keys))


if __name__ == "__main__":
    cli.run(main)
