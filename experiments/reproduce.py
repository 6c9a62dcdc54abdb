"""Reproduces the paper's MNIST and quadratic experiments: tables and plots.

    python experiments/reproduce.py --problem=mnist --path=runs/mnist_paper --preset=paper
    python experiments/reproduce.py --problem=quadratic --path=runs/quadratic

Stages, each resumable (results are cached under --output_dir and reused; the learned
optimizer's only while its nets' files at --path are unchanged):
1. train (only with --train_epochs > 0): meta-trains with train.py into --path (with
   --resume: from its checkpoint if there is one).
2. tune: for every test configuration and baseline (SGD, RMSprop, Adam, NAG with momentum
   0.9), the learning rate from --grid with the lowest mean final loss over --tuning_runs
   runs (seed --seed + 1000, so the tuning problems are not the evaluation problems).
   With --learned_grid, the learned optimizer's learning rate (the factor on its update,
   `LearnedOptimizer(learning_rate=...)`) is tuned the same way and reported as an extra
   row next to the untuned one (factor 1, as trained).
3. evaluate: --num_runs runs per optimizer and configuration (seed --seed), the same
   initialisations and batches for every optimizer. These are the paper's protocol: MNIST
   runs train on batches of the test split, and the losses reported are those training
   minibatch losses. With --heldout_steps=100,200, as many runs again train on the train
   split and report, at those steps, the model's loss and accuracy on all of the test split
   (held-out numbers, the same tuned rates).
4. report: `<tag>_results.csv` and `.md` (loss at steps 100 and 200, sum of the first 100
   losses, mean and standard error; the grid and chosen rates), and `<tag>_<config>.png`
   (loss vs step, log scale, mean with the 25-75 percentile band). The tag defaults to the
   problem's name; give another (--tag=mnist_mix) to compare a second learned optimizer
   against the same tuned baselines, which are computed once per problem.

MNIST configurations (the paper's fig. 4 and 5), all with the optimizer trained on the base
one: base (784-20-10 sigmoid, 100 steps), steps200, units40, layers2, relu.
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import json
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from absl import flags

from l2l_tf import cli, meta, networks, presets, problems

DEFAULT_GRID = ["0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3"]

flags.DEFINE_enum("problem", "mnist", ["mnist", "quadratic"], "Which experiment.")
flags.DEFINE_string("path", None, "Directory of the trained nets (written by train.py).")
flags.DEFINE_enum("preset", "original", sorted(presets.PRESETS), "Constants the nets use.")
flags.DEFINE_integer("train_epochs", 0, "Meta-train this many epochs first (0: use --path).",
                     lower_bound=0)
flags.DEFINE_float("meta_learning_rate", 0.01, "Meta-optimizer learning rate for training.")
flags.DEFINE_integer("num_runs", 100, "Evaluation runs per curve.", lower_bound=1)
flags.DEFINE_integer("tuning_runs", 20, "Runs per learning rate in the grid search.", lower_bound=1)
flags.DEFINE_list("grid", DEFAULT_GRID, "Learning rates tried for every baseline.")
flags.DEFINE_list("learned_grid", [], "Learning rates (factors on the learned optimizer's "
                  "update) to tune it over as the baselines are; empty: only the factor 1.")
flags.DEFINE_list("configs", None, "Subset of configurations to run (default: all).")
flags.DEFINE_integer("seed", 0, "Evaluation seed; tuning uses seed + 1000.")
flags.DEFINE_string("output_dir", "experiments/results", "Where tables, plots and caches go.")
flags.DEFINE_list("heldout_steps", [], "Also report, at these steps, held-out loss and "
                  "accuracy (all of the test split) of runs that train on the train split "
                  "(--problem=mnist; multiples of 20).")
flags.DEFINE_string("tag", None, "Name for this learned optimizer in tables and file names "
                    "(default: the problem's name); baselines and tuning are shared.")
FLAGS = flags.FLAGS


def configurations():
    """name -> (problem factory, num_steps). The factory takes `heldout`: False gives the
    paper's protocol (MNIST batches from the test split), True the held-out one (batches from
    the train split, `Problem.heldout` on all of the test split)."""
    if FLAGS.problem == "quadratic":
        distribution = presets.PRESETS[FLAGS.preset]["quadratic_distribution"]
        return {"base": (lambda heldout: problems.quadratic(distribution=distribution), 100)}

    def mnist(**options):
        def factory(heldout):
            if heldout:
                return problems.mnist(mode="train", heldout_split="test", **options)
            return problems.mnist(mode="test", **options)
        return factory

    return {
        "base": (mnist(), 100),
        "steps200": (mnist(), 200),
        "units40": (mnist(layers=(40,)), 100),
        "layers2": (mnist(layers=(20, 20)), 100),
        "relu": (mnist(activation="relu"), 100),
    }


def evaluate(optimizer, problem, num_steps, runs, seed):
    """Losses [runs, num_steps + 1] of `optimizer` (a MetaOptimizer) on fresh problems."""
    run = optimizer.meta_loss(problem, 20, seed=seed)
    return np.stack([meta.run_epoch(run, num_steps // 20, train=False) for _ in range(runs)])


def evaluate_heldout(optimizer, problem, steps, runs, seed):
    """`[runs, len(steps), (loss, accuracy)]` on the held-out split after each of `steps`."""
    run = optimizer.meta_loss(problem, 20, seed=seed)
    metrics = tf.function(problem.heldout)
    results = []
    for _ in range(runs):
        found = {}

        def after_unroll(step):
            if step in steps:
                found[step] = [float(v) for v in metrics([x.read_value() for x in run.x])]

        meta.run_epoch(run, max(steps) // 20, train=False, after_unroll=after_unroll)
        results.append([found.get(step, [np.nan, np.nan]) for step in steps])
    return np.array(results).reshape(runs, len(steps), 2)


def baseline(name, learning_rate):
    return meta.MetaOptimizer(**presets.baseline_nets(name, learning_rate))


def learned(learning_rate=1.0):
    """The nets in --path, their update scaled by `learning_rate` (as LearnedOptimizer's)."""
    nets = networks.load_nets(FLAGS.path)
    if learning_rate != 1.0:
        nets = {name: net.scaled(learning_rate) for name, net in nets.items()}
    return meta.MetaOptimizer(**nets)


def load_json(path, default):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return default


def train():
    command = [sys.executable, os.path.join(os.path.dirname(__file__), "train.py"),
               f"--problem={FLAGS.problem}", f"--save_path={FLAGS.path}",
               f"--num_epochs={FLAGS.train_epochs}", f"--preset={FLAGS.preset}",
               f"--learning_rate={FLAGS.meta_learning_rate}", f"--seed={FLAGS.seed}",
               "--evaluation_period=250", "--checkpoint_period=50", "--resume"]
    print("Training:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def tune(name, problem, num_steps, cache, candidates, cache_key):
    """Fills cache[name][cache_key(label)][rate] = mean final loss for `candidates` (label ->
    (build(rate), grid)); returns the best rate per label."""
    best = {}
    for label, (build, grid) in candidates.items():
        scores = cache.setdefault(name, {}).setdefault(cache_key(label), {})
        for rate in grid:
            if rate not in scores:
                finals = evaluate(build(float(rate)), problem, num_steps, FLAGS.tuning_runs,
                                  FLAGS.seed + 1000)[:, -1]
                scores[rate] = float(np.mean(finals)) if np.all(np.isfinite(finals)) else None
                print(f"  tune {name} {label} lr={rate}: {scores[rate]}", flush=True)
        finite = {r: s for r, s in scores.items() if s is not None and r in grid}
        best[label] = min(finite, key=finite.get)
    return best


def summary(losses):
    """Mean and standard error over runs: losses at steps 100 and 200, and the sum of the
    first 100 losses (steps 0..99, the losses each optimizer step is taken from)."""
    metrics = {"loss@100": losses[:, 100], "sum100": losses[:, :100].sum(1)}
    if losses.shape[1] > 200:
        metrics["loss@200"] = losses[:, 200]
    return {k: (float(np.mean(v)), float(np.std(v) / np.sqrt(len(v)))) for k, v in metrics.items()}


def plot(path, title, curves):
    import matplotlib  # checked for by main

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, losses in curves.items():
        steps = np.arange(losses.shape[1])
        ax.plot(steps, np.mean(losses, 0), label=label)
        low, high = np.percentile(losses, [25, 75], axis=0)
        ax.fill_between(steps, low, high, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    cli.require("matplotlib", "experiments")  # for the plots, before hours of work
    if FLAGS.path is None:
        raise cli.UsageError("--path is required: the directory of the trained nets.")
    if FLAGS.train_epochs:
        train()
    elif not os.path.isdir(FLAGS.path):
        raise cli.UsageError(f"--path={FLAGS.path!r} does not exist: train first "
                             "(--train_epochs=N) or point at a train.py save_path.")
    with cli.configuration_errors():
        grid = [float(rate) for rate in FLAGS.grid]
        learned_grid = [float(rate) for rate in FLAGS.learned_grid]
    if min(grid + learned_grid) <= 0:
        raise cli.UsageError("--grid and --learned_grid learning rates must be positive.")
    try:
        heldout_steps = sorted({int(step) for step in FLAGS.heldout_steps})
    except ValueError:
        raise cli.UsageError("--heldout_steps must be integers.") from None
    if heldout_steps and FLAGS.problem != "mnist":
        raise cli.UsageError("--heldout_steps needs --problem=mnist: the quadratic has no "
                             "held-out data.")
    if any(step < 20 or step % 20 for step in heldout_steps):
        raise cli.UsageError("--heldout_steps must be multiples of the unroll length, 20.")
    all_configs = configurations()
    names = FLAGS.configs or list(all_configs)
    unknown = set(names) - set(all_configs)
    if unknown:
        raise cli.UsageError(f"unknown --configs {sorted(unknown)}: use {list(all_configs)}.")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    shared = os.path.join(FLAGS.output_dir, FLAGS.problem)
    prefix = os.path.join(FLAGS.output_dir, FLAGS.tag or FLAGS.problem)
    learned_label = "L2L" if FLAGS.tag is None else f"L2L {FLAGS.tag}"
    nets = networks.nets_fingerprint(FLAGS.path)

    def cache_key(label):
        """Cached results are found by label, the learned optimizer's also by its nets'
        files, so that they are not reused once the files at --path change."""
        return f"{label} | nets {nets}" if label.startswith(learned_label) else label

    tuning_path = f"{shared}_tuning.json"
    tuning = load_json(tuning_path, {})
    rows = []
    for name in names:
        factory, num_steps = all_configs[name]
        problem = factory(heldout=False)
        start = time.time()
        candidates = {b: (lambda rate, b=b: baseline(b, rate), FLAGS.grid)
                      for b in presets.BASELINES}
        if FLAGS.learned_grid:
            candidates[learned_label] = (learned, FLAGS.learned_grid)
        best = tune(name, problem, num_steps, tuning, candidates, cache_key)
        cli.write_text_atomically(tuning_path, json.dumps(tuning, indent=1))
        curves = {}
        cache_path = f"{shared}_{name}_curves.npz"
        cached = dict(np.load(cache_path)) if os.path.exists(cache_path) else {}
        runs = [(learned_label, learned)] + [
            (f"{label} (lr {best[label]})",
             lambda build=build, rate=float(best[label]): build(rate))
            for label, (build, _) in candidates.items()]
        # A tuned factor of 1 is the learned optimizer as trained: its curves, not a rerun.
        as_trained = (f"{learned_label} (lr {best[learned_label]})"
                      if float(best.get(learned_label, 0)) == 1.0 else None)
        steps = [step for step in heldout_steps if step <= num_steps]
        heldout_path = f"{shared}_{name}_heldout.npz"
        heldout = dict(np.load(heldout_path)) if steps and os.path.exists(heldout_path) else {}
        heldout_problem = factory(heldout=True) if steps else None
        for label, build in runs:
            if cache_key(label) not in cached:
                cached[cache_key(label)] = (
                    cached[cache_key(learned_label)] if label == as_trained else
                    evaluate(build(), problem, num_steps, FLAGS.num_runs, FLAGS.seed))
                save_npz(cache_path, cached)
            curves[label] = cached[cache_key(label)]
            stats = summary(curves[label])
            at_steps = f" @ {','.join(map(str, steps))}"
            key = cache_key(label) + at_steps
            if steps and key not in heldout:
                heldout[key] = (heldout[cache_key(learned_label) + at_steps]
                                if label == as_trained else evaluate_heldout(
                                    build(), heldout_problem, steps, FLAGS.num_runs, FLAGS.seed))
                save_npz(heldout_path, heldout)
            for i, step in enumerate(steps):
                for j, metric in enumerate(("loss", "accuracy")):
                    values = heldout[key][:, i, j]
                    stats[f"held-out {metric}@{step}"] = (
                        float(np.mean(values)), float(np.std(values) / np.sqrt(len(values))))
            rows.append({"config": name, "optimizer": label, **{
                k: f"{m:.4g} ± {e:.2g}" for k, (m, e) in stats.items()}})
            print(f"{name} {label}: " + ", ".join(f"{k} {m:.4g}" for k, (m, _) in stats.items()),
                  flush=True)
        plot(f"{prefix}_{name}.png", f"{FLAGS.tag or FLAGS.problem} {name}: "
             f"{FLAGS.num_runs} runs", curves)
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    write_tables(prefix, rows, tuning, names, learned_label, cache_key(learned_label))


def save_npz(path, arrays):
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)


def write_tables(prefix, rows, tuning, names, learned_label, learned_key):
    columns = ["config", "optimizer", "loss@100", "loss@200", "sum100"]
    columns += sorted({c for r in rows for c in r if c.startswith("held-out")},
                      key=lambda c: (int(c.split("@")[1]), "accuracy" in c))
    csv = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    cli.write_text_atomically(f"{prefix}_results.csv", "\n".join(csv) + "\n")
    md = [f"Command: `python {' '.join(sys.argv)}`", "",
          f"Runs per curve: {FLAGS.num_runs} (seed {FLAGS.seed}); tuning: {FLAGS.tuning_runs} "
          f"runs per rate (seed {FLAGS.seed + 1000}), grid {', '.join(FLAGS.grid)}"
          + (f" (learned: {', '.join(FLAGS.learned_grid)})" if FLAGS.learned_grid else "")
          + "; mean ± standard error.", "",
          "Which loss: loss@100, loss@200 and sum100 (the sum of the losses at steps 0..99) "
          "are training minibatch losses, as in the paper: "
          + ("the optimizee trains on batches of the test split and each loss is that of the "
             "step's batch, before the step." if FLAGS.problem == "mnist" else
             "the quadratic's own loss.")
          + (" The held-out columns come from separate runs (same seeds and rates) that train "
             "on batches of the train split: the loss and accuracy of the model on all 10,000 "
             "images of the test split, on which it never trained."
             if any(c.startswith("held-out") for c in columns) else ""), "",
          "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    md += ["", "Grid search (mean final loss per learning rate):", ""]
    for name in names:
        for optimizer_name, scores in tuning.get(name, {}).items():
            if optimizer_name not in (*presets.BASELINES, learned_key):
                continue  # another learned optimizer's (or nets') tuning, sharing the cache
            shown = learned_label if optimizer_name == learned_key else optimizer_name
            md.append(f"- {name} {shown}: " + ", ".join(
                f"{rate}: {'diverged' if s is None else f'{s:.4g}'}" for rate, s in scores.items()))
    cli.write_text_atomically(f"{prefix}_results.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    cli.run(main)
