"""Speed and memory of l2l_tf on this machine; prints Markdown tables.

    python experiments/benchmark.py                        # all sections
    python experiments/benchmark.py --sections=meta --unroll_lengths=20,100

Sections:
- machine: float32 matmul throughput (2048^3), the yardstick for the rates below.
- fit: one `model.fit` step (batch 128) of the paper's MNIST MLP (784-20-10) and of the
  TensorFlow quickstart MLP (784-128-10 with dropout, 101,770 parameters), with Adam and with
  learned optimizers (--fit_optimizers: `default` is `LearnedOptimizer()`, other names are
  shipped ones), with Keras's default `jit_compile="auto"` (no XLA for the train step on
  CPU; the learned update compiles itself) and with `jit_compile=True`; data are random
  arrays of MNIST's shape (the cost of a step does not depend on the values).
- compile: the time to the first `model.fit` step, which traces the train step and compiles
  the learned update once per distinct variable shape (XLA compiles per shape), and the
  steps after it, on Keras applications with many variables (--compile_models, untrained,
  32 x 32 x 3 inputs, batch 32), with Adam and with `LearnedOptimizer()`.
- lstm: one step of the 2 x 20 LSTM on the MLP's 15,910 coordinates, its two matmuls alone
  and one layer's elementwise part alone: the floor any update built from TensorFlow's ops
  has here.
- meta: meta-training on the mnist problem (batch 128, LSTM 2 x 20): trace time, seconds per
  100-step epoch, optimizee steps per second including the meta-gradient, FLOPs counted by
  TensorFlow's profiler on the traced unroll, the achieved rate and its ratio to the matmul
  rate, and peak resident memory. Each configuration runs in its own process so that peak
  memory is its own.
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import functools
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

from l2l_tf import LearnedOptimizer, cli, meta, networks, presets

SECTIONS = ("machine", "fit", "compile", "lstm", "meta")
COMPILE_MODELS = {"mobilenet_v2": "MobileNetV2", "resnet50": "ResNet50"}  # keras.applications

flags.DEFINE_list("sections", list(SECTIONS), "Sections to run.")
flags.DEFINE_list("unroll_lengths", ["20"], "Unroll lengths for the meta section.")
flags.DEFINE_list("meta_jit", ["false"], "XLA settings for the meta section (false, true).")
flags.DEFINE_list("meta_recompute", ["false"],
                  "Recomputation settings for the meta section (false, true).")
flags.DEFINE_integer("epochs", 5, "Timed meta-training epochs per configuration.", lower_bound=1)
flags.DEFINE_integer("num_steps", 100, "Optimizee steps per epoch.", lower_bound=1)
flags.DEFINE_integer("fit_steps", 50, "Timed fit steps per round.", lower_bound=1)
flags.DEFINE_list("fit_models", ["mlp", "quickstart"], "Models for the fit section.")
flags.DEFINE_list("fit_optimizers", ["default", "mnist-wide"],
                  "Learned optimizers for the fit section: default or shipped names.")
flags.DEFINE_list("compile_models", ["mobilenet_v2"],
                  f"Models for the compile section, of {', '.join(COMPILE_MODELS)}.")
flags.DEFINE_integer("repeats", 12, "Interleaved timing rounds (fit, lstm).", lower_bound=1)
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


FIT_MODELS = {
    "mlp": lambda: [keras.layers.Dense(20, activation="sigmoid")],
    "quickstart": lambda: [keras.layers.Dense(128, activation="relu"),
                           keras.layers.Dropout(0.2)],
}


def fit_model(model_name, optimizer, jit_compile, x, y):
    """The model compiled with `optimizer`, after one fit that traces and compiles it."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), *FIT_MODELS[model_name](),
                              keras.layers.Dense(10)])
    model.compile(optimizer=optimizer, jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    return model


def learned_optimizer(name):
    return LearnedOptimizer() if name == "default" else LearnedOptimizer.from_pretrained(name)


def interleaved_ms(calls, repeats, count):
    """ms per call of each of `calls`, min and median over `repeats` rounds of `count` calls.

    The rounds alternate between the calls, so that the VM's slow phases (timings here drift
    by up to 2x over seconds) hit every call alike; the minimum is the least disturbed.
    """
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) / count * 1000)
    return {name: (min(t), float(np.median(t))) for name, t in times.items()}


def fit_section():
    steps = FLAGS.fit_steps
    names = FLAGS.fit_optimizers
    print(f"\n## model.fit step, batch 128 ({FLAGS.repeats} interleaved rounds of {steps} "
          "steps; ms, min / median; ratio: of the minima, to Adam's with the same jit_compile)\n")
    print("| model | jit_compile | Adam | " + " | ".join(f"{n} | ratio" for n in names) + " |")
    print("| --- | --- | --- | " + " | ".join("--- | ---" for _ in names) + " |")
    rng = np.random.default_rng(0)
    x = rng.random((128 * steps, 784), dtype=np.float32)
    y = rng.integers(0, 10, 128 * steps)
    for model_name in FLAGS.fit_models:
        models = {}
        for jit in ("auto", True):
            models[("Adam", jit)] = fit_model(model_name, keras.optimizers.Adam(), jit, x, y)
            for name in names:
                models[(name, jit)] = fit_model(model_name, learned_optimizer(name), jit, x, y)
        ms = interleaved_ms(
            {key: functools.partial(model.fit, x, y, batch_size=128, epochs=1, verbose=0)
             for key, model in models.items()}, FLAGS.repeats, steps)
        for jit in ("auto", True):
            adam = ms[("Adam", jit)]
            cells = [f"{ms[(n, jit)][0]:.2f} / {ms[(n, jit)][1]:.2f} | "
                     f"{ms[(n, jit)][0] / adam[0]:.2f}" for n in names]
            print(f"| {model_name} | {jit} | {adam[0]:.2f} / {adam[1]:.2f} | "
                  + " | ".join(cells) + " |", flush=True)


def compile_section():
    """Time to the first step: a model with many variables of many shapes is where the
    learned update's compilation, once per distinct shape, shows."""
    steps = FLAGS.fit_steps
    print(f"\n## Time to the first model.fit step, batch 32 (s; then ms per step over "
          f"{steps} steps)\n")
    print("| model | variables | distinct shapes | Adam: first step | Adam: per step | "
          "default: first step | default: per step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    x = rng.random((32 * steps, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 32 * steps)
    for model_name in FLAGS.compile_models:
        cells = []
        for optimizer in (keras.optimizers.Adam, LearnedOptimizer):
            keras.utils.set_random_seed(0)
            model = getattr(keras.applications, COMPILE_MODELS[model_name])(
                input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None)
            model.compile(optimizer=optimizer(),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            start = time.perf_counter()
            model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.fit(x, y, batch_size=32, epochs=1, verbose=0)
            cells += [f"{first:.1f}", f"{(time.perf_counter() - start) / steps * 1000:.0f}"]
        shapes = {tuple(v.shape) for v in model.trainable_variables}
        print(f"| {model_name} | {len(model.trainable_variables)} | {len(shapes)} | "
              + " | ".join(cells) + " |", flush=True)


def lstm_section():
    """Where the learned update's time goes: the pieces of one LSTM step on the MLP's size."""
    rows = 15910  # coordinates of the MNIST MLP 784-20-10
    print(f"\n## One LSTM step (2 x 20) on {rows} coordinates, and its parts "
          f"({FLAGS.repeats} interleaved rounds of 20 calls; ms, min / median)\n")
    net = networks.build_nets(presets.default_nets())[presets.DEFAULT_NET_NAME]
    weights = net.initial_weights(0)
    gradient = tf.random.normal([rows], seed=0) * 1e-3
    state = tuple(tf.zeros(shape) for shape in net.state_shapes([rows]))
    inputs = [tf.random.normal(shape, seed=0) for shape in ([rows, 22], [22, 80],
                                                             [rows, 40], [40, 80])]
    gates, cell = tf.random.normal([rows, 80], seed=0), tf.random.normal([rows, 20], seed=0)
    parts = {"whole step": lambda: net.step(weights, gradient, state),
             "its two matmuls": lambda: (tf.matmul(inputs[0], inputs[1]),
                                         tf.matmul(inputs[2], inputs[3])),
             "one layer's elementwise part": lambda: networks.lstm_cell_update(gates, cell)}
    calls = {}
    for jit in (False, True):
        for name, part in parts.items():
            function = tf.function(part, jit_compile=jit)
            function()

            def call(function=function):
                for _ in range(19):
                    function()
                tf.nest.map_structure(lambda t: t.numpy(), function())

            calls[(name, jit)] = call
    ms = interleaved_ms(calls, FLAGS.repeats, 20)
    print("| part | without XLA | with XLA |")
    print("| --- | --- | --- |")
    for name in parts:
        cells = [f"{ms[(name, jit)][0]:.2f} / {ms[(name, jit)][1]:.2f}" for jit in (False, True)]
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)


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
        child = subprocess.run(command, capture_output=True, text=True, check=False)
        if child.returncode == 2:  # the child's own one-line user error (e.g. no MNIST)
            raise cli.UsageError(child.stderr.strip().splitlines()[-1].removeprefix("error: "))
        if child.returncode != 0:
            raise RuntimeError(f"benchmark child {command[2]} failed:\n{child.stderr}")
        r = json.loads(child.stdout.strip().splitlines()[-1])
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
    unknown = set(FLAGS.sections) - set(SECTIONS)
    if unknown:
        raise cli.UsageError(
            f"unknown --sections {sorted(unknown)}: use {', '.join(SECTIONS)}.")
    unknown = set(FLAGS.fit_models) - set(FIT_MODELS)
    if unknown:
        raise cli.UsageError(f"unknown --fit_models {sorted(unknown)}: use {', '.join(FIT_MODELS)}.")
    unknown = set(FLAGS.compile_models) - set(COMPILE_MODELS)
    if unknown:
        raise cli.UsageError(f"unknown --compile_models {sorted(unknown)}: use "
                             f"{', '.join(COMPILE_MODELS)}.")
    with cli.configuration_errors():
        for name in FLAGS.fit_optimizers:
            learned_optimizer(name)
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
    if "compile" in FLAGS.sections:
        compile_section()
    if "lstm" in FLAGS.sections:
        lstm_section()
    if "meta" in FLAGS.sections:
        meta_section(machine_rate)


if __name__ == "__main__":
    cli.run(main)
