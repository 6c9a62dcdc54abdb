"""Speed and memory of l2l_tf on this machine; prints Markdown tables.

    python experiments/benchmark.py                        # all sections
    python experiments/benchmark.py --sections=meta --unroll_lengths=20,100

Sections:
- machine: float32 matmul throughput (2048^3), the yardstick for the rates below.
- fit: one `model.fit` step of the MNIST MLP (784-20-10, batch 128) with Adam and with
  `LearnedOptimizer` (2 x 20 LSTM), with and without XLA; data are random arrays of MNIST's
  shape (the cost of a step does not depend on the values).
- meta: meta-training on the mnist problem (batch 128, LSTM 2 x 20): trace time, seconds per
  100-step epoch, optimizee steps per second including the meta-gradient, FLOPs counted by
  TensorFlow's profiler on the traced unroll, the achieved rate and its ratio to the matmul
  rate, and peak resident memory. Each configuration runs in its own process so that peak
  memory is its own.
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import itertools
import json
import resource
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from l2l_tf import LearnedOptimizer, cli, meta, presets

flags.DEFINE_list("sections", ["machine", "fit", "meta"], "Sections to run.")
flags.DEFINE_list("unroll_lengths", ["20"], "Unroll lengths for the meta section.")
flags.DEFINE_list("meta_jit", ["false"], "XLA settings for the meta section (false, true).")
flags.DEFINE_list("meta_recompute", ["false"],
                  "Recomputation settings for the meta section (false, true).")
flags.DEFINE_integer("epochs", 5, "Timed meta-training epochs per configuration.", lower_bound=1)
flags.DEFINE_integer("num_steps", 100, "Optimizee steps per epoch.", lower_bound=1)
flags.DEFINE_integer("fit_steps", 100, "Timed fit steps per repetition.", lower_bound=1)
flags.DEFINE_string("child", None, "Internal: run one meta configuration and print JSON.")
FLAGS = flags.FLAGS


def peak_memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_gflops(size=2048, repeats=10):
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul().numpy()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul().numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def fit_step_ms(optimizer, jit_compile, steps):
    rng = np.random.default_rng(0)
    x = rng.random((128 * steps, 784), dtype=np.float32)
    y = rng.integers(0, 10, 128 * steps)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(20, activation="sigmoid"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=optimizer, jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)  # trace and compile
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.fit(x, y, batch_size=128, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) / steps * 1000)
    return float(np.median(times))


def fit_section():
    print("\n## model.fit step, MNIST MLP 784-20-10, batch 128 (median of 5 x "
          f"{FLAGS.fit_steps} steps)\n")
    print("| XLA | Adam ms/step | LearnedOptimizer ms/step | ratio |")
    print("| --- | --- | --- | --- |")
    for jit in (False, True):
        adam = fit_step_ms(keras.optimizers.Adam(), jit, FLAGS.fit_steps)
        learned = fit_step_ms(LearnedOptimizer(seed=0), jit, FLAGS.fit_steps)
        print(f"| {jit} | {adam:.2f} | {learned:.2f} | {learned / adam:.2f} |", flush=True)


def unroll_flops(run):
    from tensorflow.python.profiler import model_analyzer, option_builder

    options = (option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build())
    graph = run._unroll.get_concrete_function(train=True).graph
    return model_analyzer.profile(graph, options=options).total_float_ops


def meta_child(unroll_length, jit_compile, recompute):
    """One meta-training configuration; returns a dict of measurements."""
    problem, net_config, _ = presets.get_config("mnist")
    optimizer = meta.MetaOptimizer(seed=0, **net_config)
    run = optimizer.meta_minimize(problem, unroll_length, learning_rate=0.001,
                                  jit_compile=jit_compile, recompute=recompute)
    memory_before = peak_memory_mb()
    num_unrolls = FLAGS.num_steps // unroll_length
    start = time.perf_counter()
    run.step()
    trace_seconds = time.perf_counter() - start
    meta.run_epoch(run, num_unrolls, train=True)  # warm-up
    times = []
    for _ in range(FLAGS.epochs):
        start = time.perf_counter()
        meta.run_epoch(run, num_unrolls, train=True)
        times.append(time.perf_counter() - start)
    epoch_seconds = float(np.median(times))
    flops_per_epoch = unroll_flops(run) * num_unrolls
    return {
        "unroll_length": unroll_length, "jit_compile": jit_compile, "recompute": recompute,
        "trace_seconds": trace_seconds, "epoch_seconds": epoch_seconds,
        "steps_per_second": FLAGS.num_steps / epoch_seconds,
        "gflop_per_epoch": flops_per_epoch / 1e9,
        "gflops": flops_per_epoch / epoch_seconds / 1e9,
        "peak_memory_mb": peak_memory_mb(), "memory_before_mb": memory_before,
    }


def meta_section(machine_rate):
    print(f"\n## Meta-training, mnist problem, {FLAGS.num_steps}-step epochs (median of "
          f"{FLAGS.epochs})\n")
    print("| unroll | XLA | recompute | trace s | s/epoch | steps/s | GFLOP/epoch | GFLOP/s "
          "| of matmul peak | peak RSS MB (before first unroll) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    settings = itertools.product(FLAGS.unroll_lengths, FLAGS.meta_jit, FLAGS.meta_recompute)
    for unroll_length, jit, recompute in settings:
        command = [sys.executable, __file__, f"--child={unroll_length}:{jit}:{recompute}",
                   f"--epochs={FLAGS.epochs}", f"--num_steps={FLAGS.num_steps}"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        r = json.loads(output.strip().splitlines()[-1])
        print(f"| {r['unroll_length']} | {r['jit_compile']} | {r['recompute']} | "
              f"{r['trace_seconds']:.1f} | {r['epoch_seconds']:.3f} | "
              f"{r['steps_per_second']:.0f} | {r['gflop_per_epoch']:.1f} | {r['gflops']:.1f} | "
              f"{r['gflops'] / machine_rate:.0%} | {r['peak_memory_mb']:.0f} "
              f"({r['memory_before_mb']:.0f}) |", flush=True)


def main(argv):
    if FLAGS.child is not None:
        unroll_length, jit, recompute = FLAGS.child.split(":")
        print(json.dumps(meta_child(int(unroll_length), jit == "true", recompute == "true")))
        return
    unknown = set(FLAGS.sections) - {"machine", "fit", "meta"}
    if unknown:
        raise cli.UsageError(f"unknown --sections {sorted(unknown)}: use machine, fit, meta.")
    if any(FLAGS.num_steps % int(u) for u in FLAGS.unroll_lengths):
        raise cli.UsageError("every --unroll_lengths value must divide --num_steps.")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{len(tf.config.list_physical_devices('CPU'))} CPU device(s), "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'} intra-op threads")
    machine_rate = matmul_gflops()
    if "machine" in FLAGS.sections:
        print(f"\n## Machine\n\nfloat32 matmul 2048^3: {machine_rate:.0f} GFLOP/s")
    if "fit" in FLAGS.sections:
        fit_section()
    if "meta" in FLAGS.sections:
        meta_section(machine_rate)


if __name__ == "__main__":
    cli.run(main)
