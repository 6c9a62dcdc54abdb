"""The absl scripts as a user runs them: real processes, real files, exit codes."""

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

import l2l_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--problem=simple", "--num_steps=10", "--unroll_length=5", "--log_period=2",
         "--evaluation_period=2", "--evaluation_epochs=2", "--checkpoint_period=2",
         "--learning_rate=0.01", "--noprogress"]


def script(name, *args, timeout=300, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", name), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_train_saves_logs_checkpoints_and_resumes(tmp_path):
    save_path = str(tmp_path / "run")
    first = script("train.py", *QUICK, "--num_epochs=4", f"--save_path={save_path}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("Log Mean Final Error") == 4  # 2 logs + 2 evaluations
    assert "Mean epoch time" in first.stdout
    assert sorted(os.listdir(save_path)) == ["checkpoint", "cw.npz", "flags.json", "tensorboard"]
    assert any(f.startswith("events") for f in os.listdir(os.path.join(save_path, "tensorboard")))
    resumed = script("train.py", *QUICK, "--num_epochs=6", f"--save_path={save_path}", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 4" in resumed.stdout and "Epoch 6" in resumed.stdout

    output = str(tmp_path / "losses.json")
    evaluation = script("evaluate.py", "--problem=simple", "--optimizer=L2L",
                        f"--path={save_path}", "--num_epochs=3", "--num_steps=10",
                        "--unroll_length=5", f"--output={output}")
    assert evaluation.returncode == 0, evaluation.stderr
    with open(output) as f:
        losses = np.array(json.load(f)["losses"])
    assert losses.shape == (3, 11) and np.all(losses[:, 0] == 1.0)
    assert np.all(losses[:, -1] < 1.0)  # the trained linear rule shrinks x^2
    # The saved nets load into the Keras optimizer.
    assert list(l2l_tf.LearnedOptimizer.from_pretrained(save_path).nets) == ["cw"]


def test_one_command_survives_sigkills_before_and_after_the_first_checkpoint(tmp_path):
    """What a supervisor does with a preemptible job: run the same command line (with
    --resume) again and again. Killed before its first checkpoint, the run starts afresh and
    says so; killed later, it continues from its checkpoint, never more than one checkpoint
    interval behind, with no corrupt file; the end result is bit-for-bit the uninterrupted
    run's (op determinism on)."""
    args = QUICK + ["--problem=quadratic", "--num_steps=20", "--unroll_length=10",
                    "--num_epochs=30", "--log_period=1", "--evaluation_period=3",
                    "--checkpoint_period=2", "--deterministic"]
    straight = script("train.py", *args, f"--save_path={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr

    path = tmp_path / "killed"
    command = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), *args,
               f"--save_path={path}", "--resume"]
    index = path / "checkpoint" / "checkpoint"
    # The first kill comes as the run announces its fresh start, before the first epoch (the
    # first checkpoint is after epoch 2); the others once training is under way, after a
    # random delay.
    delays = [None, *np.random.default_rng(0).uniform(0.0, 1.5, size=2)]
    resumes = 0
    for delay in delays:
        had_checkpoint = index.exists()
        resumes += had_checkpoint
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Epoch ") or (delay is None and "no checkpoint in" in line):
                break
        if delay is not None:
            time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        rest, _ = process.communicate()
        log = "".join(lines) + rest
        if had_checkpoint:
            assert "Resumed from" in log, log
        else:
            assert "no checkpoint in" in log and "starting from epoch 0" in log, log
        if delay is None:
            assert not index.exists(), "killed before the first checkpoint"
        epochs = [int(l.split()[1]) for l in log.splitlines() if l.startswith("Epoch ")]
        checkpoint = 0
        if index.exists():
            checkpoint = int(index.read_text().splitlines()[0].split("ckpt-")[1].rstrip('"'))
        assert checkpoint >= max(epochs, default=0) - 2, (checkpoint, epochs)
        if (path / "cw.npz").exists():  # the nets file is readable whenever it exists
            with np.load(path / "cw.npz") as saved:
                assert saved["lstm_0/w_gates"].shape == (21, 80)

    assert resumes >= 1, "no kill came after a checkpoint"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    # A writer killed before its rename leaves a temporary file; a restart removes it.
    assert not [f for f in os.listdir(path) if f.startswith(".tmp")]
    a, b = np.load(tmp_path / "straight" / "cw.npz"), np.load(path / "cw.npz")
    for key in a.files:
        if key != "__l2l_tf__":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_fine_tunes_from_init_path(tmp_path):
    """--init_path starts from saved nets: with a zero meta learning rate they stay as loaded."""
    shipped = os.path.join(os.path.dirname(l2l_tf.__file__), "pretrained", "quadratic")
    result = script("train.py", "--problem=quadratic", f"--init_path={shipped}",
                    "--learning_rate=0", "--num_epochs=2", "--num_steps=10", "--unroll_length=5",
                    "--evaluation_period=2", "--evaluation_epochs=1", "--noprogress",
                    f"--save_path={tmp_path / 'tuned'}")
    assert result.returncode == 0, result.stderr
    a, b = np.load(os.path.join(shipped, "cw.npz")), np.load(tmp_path / "tuned" / "cw.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        if key != "__l2l_tf__":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_runs_offline_on_mnist(tmp_path, mnist_data_dir):
    result = script("train.py", "--problem=mnist", "--num_epochs=2", "--num_steps=20",
                    "--unroll_length=10", "--log_period=1", "--evaluation_period=2",
                    "--evaluation_epochs=1", "--noprogress", f"--save_path={tmp_path / 'm'}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Log Mean Final Error") == 3
    assert os.path.exists(tmp_path / "m" / "cw.npz")


BAD_TRAIN_FLAGS = [
    (["--problem=nope"], "unknown --problem='nope'"),
    (["--unroll_length=30"], "does not divide --num_steps=100"),
    (["--num_steps=0"], "--num_steps=0"),
    (["--num_steps=1.5"], "--num_steps"),
    (["--preset=best"], "--preset=best"),
    (["positional"], "unexpected arguments"),
    (["--init_path=/nonexistent"], "--init_path='/nonexistent' is not a directory"),
    (["--meta_objective=validation"], "A validation split is available for the mnist"),
]


@pytest.mark.parametrize("flags, message", BAD_TRAIN_FLAGS)
def test_bad_train_flags_give_one_line_and_exit_2(flags, message, tmp_path):
    result = script("train.py", *flags, f"--save_path={tmp_path / 'never'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert message in result.stderr
    assert not (tmp_path / "never").exists()


def test_existing_save_path_without_resume_is_refused_and_untouched(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "cw.npz").write_bytes(b"precious")
    result = script("train.py", f"--save_path={tmp_path / 'run'}")
    assert result.returncode == 2 and "already holds a run: pass --resume" in result.stderr
    assert (tmp_path / "run" / "cw.npz").read_bytes() == b"precious"


@pytest.mark.parametrize("flags, message", [
    (["--optimizer=L2L", "--problem=simple"], "needs --path"),
    (["--optimizer=L2L", "--problem=simple", "--path=/nonexistent"], "No net weights file"),
    (["--optimizer=Adagrad"], "--optimizer=Adagrad"),
    (["--optimizer=Adam", "--output=losses.txt"], "must end in .csv or .json"),
    (["--optimizer=Adam", "--heldout_steps=100"], "needs --split=train"),
    (["--optimizer=Adam", "--split=train", "--heldout_steps=50"],
     "must be multiples of --unroll_length=20"),
    (["--optimizer=Adam", "--split=train", "--heldout_steps=100", "--problem=quadratic"],
     "Held-out evaluation is available for the mnist problem"),
])
def test_bad_evaluate_flags_give_one_line_and_exit_2(flags, message):
    result = script("evaluate.py", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


def test_evaluate_reports_held_out_test_numbers_of_runs_on_the_train_split(tmp_path,
                                                                           mnist_data_dir):
    output = tmp_path / "adam.csv"
    result = script("evaluate.py", "--problem=mnist", "--optimizer=Adam", "--learning_rate=0.03",
                    "--split=train", "--num_steps=40", "--heldout_steps=20,40",
                    "--num_epochs=2", f"--output={output}")
    assert result.returncode == 0, result.stderr
    assert "(training minibatch, train split)" in result.stdout
    lines = [l for l in result.stdout.splitlines() if l.startswith("Held-out")]
    assert [l.split(":")[0] for l in lines] == [
        "Held-out (all of the test split) at step 20", "Held-out (all of the test split) at step 40"]
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 41
    heldout = {(r["epoch"], r["step"]): (float(r["heldout_loss"]), float(r["heldout_accuracy"]))
               for r in rows if r["heldout_loss"]}
    assert sorted(heldout) == [("0", "20"), ("0", "40"), ("1", "20"), ("1", "40")]
    for epoch in ("0", "1"):  # Adam learns: the held-out loss falls, the accuracy rises
        assert heldout[(epoch, "40")][0] < heldout[(epoch, "20")][0] < 2.3
        assert 0.1 < heldout[(epoch, "20")][1] < heldout[(epoch, "40")][1] <= 1.0
    printed = float(lines[1].split("loss ")[1].split(" ")[0])
    assert abs(printed - np.mean([heldout[(e, "40")][0] for e in ("0", "1")])) < 1e-3


def test_benchmark_prints_its_tables_and_refuses_unknown_sections():
    """Structure only: timings are the benchmark's output, never asserted."""
    result = script("benchmark.py", "--sections=fit,lstm", "--repeats=1", "--fit_steps=2",
                    "--fit_models=quickstart", "--fit_optimizers=default,mnist")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row[:2] for row in rows[:4]] == [
        ["| model", "jit_compile"], ["| ---", "---"], ["| quickstart", "auto"],
        ["| quickstart", "True"]]
    assert rows[0][3:] == ["default", "ratio", "mnist", "ratio |"]
    ratios = [float(row[i].rstrip(" |")) for row in rows[2:4] for i in (4, 6)]
    assert all(ratio > 0 for ratio in ratios)
    assert [row[0] for row in rows[4:]] == [
        "| part", "| ---", "| whole step", "| its two matmuls", "| one layer's elementwise part"]
    bad = script("benchmark.py", "--sections=fit,speed")
    assert bad.returncode == 2 and "unknown --sections ['speed']" in bad.stderr
    bad = script("benchmark.py", "--sections=fit", "--fit_models=resnet")
    assert bad.returncode == 2 and "unknown --fit_models ['resnet']" in bad.stderr
    bad = script("benchmark.py", "--sections=compile", "--compile_models=vgg16")
    assert bad.returncode == 2 and "unknown --compile_models ['vgg16']" in bad.stderr


def test_keras_fit_writes_held_out_tables_chooses_adam_on_validation_and_resumes(
        tmp_path, mnist_data_dir):
    output = tmp_path / "fit.md"
    args = ["--models=mlp_sigmoid,mlp_relu", "--epochs=2", "--report_epochs=1,2", "--seeds=0,1",
            "--adam_grid=0.001,0.03",
            "--optimizers=default@2:cosine,adam@0.001:cosine,adam@0.03:cosine",
            "--train_examples=1280", "--validation_examples=2000", f"--output={output}"]
    result = script("keras_fit.py", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("seed ") == 2 * 5 * 2  # models x optimizers x seeds, each run
    text = output.read_text()
    assert "every number below is on the 10,000 images of the test split" in text
    with open(tmp_path / "fit.csv", newline="") as f:
        header, *records = list(csv.reader(f))
    assert header == ["model", "optimizer", "seed", "epoch", "seconds", "train_loss",
                      "validation_loss", "validation_accuracy", "test_loss", "test_accuracy"]
    assert len(records) == 2 * 5 * 2 * 2  # models x optimizers x seeds x epochs
    column = {name: i for i, name in enumerate(header)}

    def mean(model, optimizer, epoch, field):
        return np.mean([float(r[column[field]]) for r in records if r[0] == model
                        and r[1] == optimizer and r[3] == str(epoch)])

    tables = text.split("Test loss (accuracy) after epoch ")[1:]
    for epoch, section in zip((1, 2), tables):
        table = section.split("\n\n")[1]
        rows = [line.split(" | ") for line in table.splitlines()[2:]]
        assert [r[0] for r in rows] == ["| mlp_sigmoid", "| mlp_relu"]
        for row in rows:
            model = row[0].lstrip("| ")
            # The best constant Adam is the grid's rate with the lowest validation loss, and
            # so is the best Adam of a schedule run at several rates ...
            best = {}
            for suffix in ("", ", cosine"):
                validation = {rate: mean(model, f"adam {rate}{suffix}", epoch, "validation_loss")
                              for rate in ("0.001", "0.03")}
                best[suffix] = min(validation, key=validation.get)
            assert row[2].endswith(f"({best['']})") and row[3].endswith(f"({best[', cosine']})")
            # ... and every cell is the mean test loss over seeds of its csv rows.
            for cell, optimizer in zip(row[1:], ["adam 0.001", f"adam {best['']}",
                                                 f"adam {best[', cosine']}, cosine",
                                                 "default 2, cosine"], strict=True):
                want = mean(model, optimizer, epoch, "test_loss")
                assert abs(float(cell.split(" ± ")[0]) - want) < 6e-5, (cell, want)
    for r in records:  # 1280 examples are 10 steps an epoch: the MLPs learn (ln 10 = 2.30)
        assert float(r[column["test_loss"]]) < 2.3 and float(r[column["seconds"]]) > 0
    assert (tmp_path / "fit.png").stat().st_size > 0

    again = script("keras_fit.py", *args)  # every run is in the cache: none runs again
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("seed ") == 0 and output.read_text() == text
    with open(tmp_path / "fit_runs.json") as f:  # each run is keyed by its initial weights
        keys = list(json.load(f))
    keras_fit = load_experiment("keras_fit")
    for model in ("mlp_sigmoid", "mlp_relu"):
        for seed in (0, 1):
            init = f"|init {keras_fit.initial_weights_fingerprint(model, seed)}"
            assert sum(k.startswith(f"{model}|") and init in k for k in keys) == 5, init


def test_keras_fit_scores_models_without_accuracy_and_the_extra_models(tmp_path, mnist_data_dir):
    """The autoencoder and the regression have a mean squared error and no accuracy; the
    transformer has both. (That the default steps the transformer's Dense kernels through a
    partial last batch is test_optimizer's; its compile would triple this test's time.)"""
    output = tmp_path / "fit.md"
    result = script("keras_fit.py", "--models=autoencoder,regression,transformer", "--epochs=1",
                    "--seeds=0", "--adam_grid=0.001", "--optimizers=",
                    "--train_examples=1000", "--validation_examples=2000", f"--output={output}")
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert ("Loss: the classifiers' cross-entropy; the autoencoder's mean squared error of its "
            "reconstruction (no accuracy); the regression's squared error") in text
    table = text.split("Test loss (accuracy) after epoch 1:")[1].split("\n\n")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert "%" not in rows["autoencoder"] and "%" not in rows["regression"]
    assert rows["transformer"].count("%") == 2  # Adam() and the best constant Adam
    with open(tmp_path / "fit.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 3
    for r in records:
        assert np.isfinite(float(r["test_loss"])), r
        assert (r["test_accuracy"] == "nan") == (r["model"] != "transformer"), r


def test_batchnorm_lag_recomputes_the_statistics_restores_them_and_resumes(
        tmp_path, mnist_data_dir):
    """Two test losses per run, with batch normalisation's moving statistics and with them
    recomputed; the model's statistics and momentum are left as they were; finished runs
    are not run again; a model without batch normalisation's task is refused."""
    output = tmp_path / "lag.md"
    args = ["--models=cnn_bn", "--epochs=1", "--seeds=0", "--adam_grid=0.001",
            "--optimizers=", "--train_examples=640", "--validation_examples=2000",
            f"--output={output}"]
    first = script("batchnorm_lag.py", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("seed 0: test loss") == 1
    row = next(line for line in output.read_text().splitlines()
               if line.startswith("| cnn_bn | adam 0.001 |"))
    moving, recomputed = (float(x) for x in row.split(" | ")[2].split(" (")[0].split(" / "))
    assert moving != recomputed  # a few dozen steps: the averages trail the weights
    # Five steps an epoch leave no 100 to measure the kernels' motion over.
    assert row.split(" | ")[2].endswith("(n/a)"), row
    assert "at batch 128 on 640 training images" in output.read_text()
    again = script("batchnorm_lag.py", *args)
    assert again.returncode == 0 and "seed 0: test loss" not in again.stdout
    refused = script("batchnorm_lag.py", "--models=autoencoder", f"--output={output}")
    assert refused.returncode == 2 and "is not a classifier" in refused.stderr
    refused = script("batchnorm_lag.py", "--models=cnn_bn", "--pretrain_classes=0,1",
                     f"--output={output}")
    assert refused.returncode == 2 and "measure fine-tuning with keras_fit.py" in refused.stderr


def test_recomputing_batch_normalisation_statistics_leaves_the_model_as_it_was():
    import keras

    batchnorm_lag = load_experiment("batchnorm_lag")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(momentum=0.9),
                              keras.layers.Dense(2)])
    layer = model.layers[1]
    before = (layer.moving_mean.numpy(), layer.moving_variance.numpy())
    rng = np.random.default_rng(0)
    data = {"train": (5 + 3 * rng.normal(size=(50, 4)).astype(np.float32), None),
            "test": (rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 2, 20))}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    lagged = float(loss(data["test"][1], model.predict(data["test"][0], verbose=0)))
    recomputed = batchnorm_lag.recomputed_test_loss(model, data, loss)
    assert recomputed != pytest.approx(lagged)
    assert layer.momentum == 0.9
    np.testing.assert_array_equal(layer.moving_mean.numpy(), before[0])
    np.testing.assert_array_equal(layer.moving_variance.numpy(), before[1])


def test_keras_fit_weight_decay_builds_adamw_and_the_learned_optimizer_s_own_and_keeps_keys():
    """`:weight_decay=VALUE` makes Adam an AdamW and passes the decay to LearnedOptimizer; it
    is in the label (the run cache's key) only when given, so the keys of runs cached
    before it existed stay the same; a decayed Adam is not in the constant Adam's grid."""
    import keras

    keras_fit = load_experiment("keras_fit")
    keras_fit.FLAGS(["keras_fit"])
    assert keras_fit.parse_optimizer("default@1") == ("default", 1.0, "constant")
    decayed = keras_fit.parse_optimizer("adam@0.001:plateau:weight_decay=0.3")
    assert decayed == ("adam", 0.001, "plateau", 0.3)
    assert keras_fit.parse_optimizer("default@1:weight_decay=1:cosine") == (
        "default", 1.0, "cosine", 1.0)
    assert keras_fit.label(("default", 1.0, "constant")) == "default 1"
    assert keras_fit.label(decayed) == "adam 0.001, plateau, weight decay 0.3"
    adamw = keras_fit.build_optimizer(("adam", 0.001, "constant", 0.3), total_steps=10)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.3
    assert type(keras_fit.build_optimizer(("adam", 0.001, "constant"), 10)) is keras.optimizers.Adam
    learned = keras_fit.build_optimizer(("default", 1.0, "constant", 1.0), total_steps=10)
    assert isinstance(learned, l2l_tf.LearnedOptimizer) and learned.weight_decay == 1.0
    assert keras_fit.build_optimizer(("default", 1.0, "constant"), 10).weight_decay is None
    validation = {0.001: 0.5, 0.01: 0.4}
    results = {("m", ("adam", rate, "constant")): {0: [{"validation_loss": loss}]}
               for rate, loss in validation.items()}
    results[("m", ("adam", 0.003, "constant", 1.0))] = {0: [{"validation_loss": 0.1}]}
    assert keras_fit.best_adam_rate(results, "m", [0], 1)[0] == 0.01


def test_calibration_chooses_the_temperature_on_the_validation_split_alone():
    """A model whose validation logits are 3x too sure gets T = 3 (to the grid's 2.9%),
    whatever the test logits would prefer; the test loss is then scored at that T, and the
    cross-entropy is Keras's."""
    import keras

    calibration = load_experiment("calibration")
    rng = np.random.default_rng(0)

    def sample(n):
        logits = rng.normal(scale=2.0, size=(n, 10))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        labels = np.array([rng.choice(10, p=row) for row in p])
        return logits, labels

    class Identity:  # predict returns its input: the data are the logits
        def predict(self, x, batch_size, verbose):
            return x

    (validation, validation_labels), (test, test_labels) = sample(20000), sample(2000)
    data = {"validation": (3.0 * validation, validation_labels), "test": (test, test_labels)}
    result = calibration.calibrated(Identity(), data)
    assert result["temperature"] == pytest.approx(3.0, rel=0.06)
    assert calibration.best_temperature(test, test_labels) == pytest.approx(1.0, rel=0.1)
    assert result["calibrated_test_loss"] == pytest.approx(
        calibration.cross_entropy(test, test_labels, result["temperature"]))
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert calibration.cross_entropy(test, test_labels, 2.0) == pytest.approx(
        float(keras_loss(test_labels, test / 2.0)), rel=1e-5)


def test_calibration_script_tables_both_losses_resumes_and_refuses_non_classifiers(
        tmp_path, mnist_data_dir):
    """The table has each run's test loss and its calibrated one; the same command runs
    nothing again; a model that does not classify is refused with exit 2."""
    output = tmp_path / "calibration.md"
    args = ["--models=mlp_relu", "--epochs=2", "--report_epochs=1,2", "--seeds=0",
            "--adam_grid=0.001", "--optimizers=default@1", "--train_examples=640",
            "--validation_examples=2000", f"--output={output}"]
    first = script("calibration.py", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("seed 0: test loss") == 2
    text = output.read_text()
    assert text.count("| mlp_relu | default 1 |") == 2  # epochs 1 and 2
    cache = json.loads((tmp_path / "calibration_runs.json").read_text())
    for runs in cache.values():
        for epoch in runs:
            assert 0.1 <= epoch["temperature"] <= 10
            assert np.isfinite(epoch["calibrated_test_loss"])
    row = text.split("Epoch 2:")[1].split("| mlp_relu | default 1 | ")[1].split(" | ")
    last = next(runs[-1] for key, runs in cache.items() if "|default 1|" in key)
    assert float(row[0]) == pytest.approx(last["test_loss"], abs=1e-4)
    assert float(row[1]) == pytest.approx(last["calibrated_test_loss"], abs=1e-4)
    assert "test loss below Adam()'s on" in text
    again = script("calibration.py", *args)
    assert again.returncode == 0 and "seed 0: test loss" not in again.stdout
    refused = script("calibration.py", "--models=autoencoder", f"--output={output}")
    assert refused.returncode == 2 and "do not classify" in refused.stderr


def test_keras_fit_plateau_lowers_the_rate_after_an_epoch_without_a_new_best_validation_loss():
    """`adam@0.01:plateau` is Keras's `ReduceLROnPlateau(factor=0.3, patience=1)` on the
    validation loss across the one-epoch `fit` calls: the same run as a constant rate while
    that loss keeps falling (validation = training data), and a different one from the epoch
    after it first rises (validation = the training images, each labelled as the next digit:
    the better the model learns, the worse it does there)."""
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    rng = np.random.default_rng(0)

    def examples():
        return (rng.uniform(size=(64, 784)).astype(np.float32),
                rng.integers(0, 10, 64).astype(np.int32))

    train, unlearnable = examples(), examples()
    mislabelled = (train[0], (train[1] + 1) % 10)
    with flagsaver.flagsaver(epochs=3, batch_size=16):
        runs = {(case, schedule): keras_fit.run("logistic", ("adam", 0.01, schedule), 0,
                                                {"train": train, "validation": validation,
                                                 "test": unlearnable})
                for case, validation in (("falls", train), ("rises", mislabelled))
                for schedule in ("constant", "plateau")}

    def losses(case, schedule, field):
        return np.array([epoch[field] for epoch in runs[(case, schedule)]])

    assert np.all(np.diff(losses("falls", "constant", "validation_loss")) < -1e-4)
    np.testing.assert_allclose(losses("falls", "plateau", "train_loss"),
                               losses("falls", "constant", "train_loss"), rtol=1e-6)
    rises = losses("rises", "constant", "validation_loss")
    assert rises[1] > rises[0] + 1e-4  # so the rate falls after epoch 2
    constant, plateau = losses("rises", "constant", "train_loss"), losses("rises", "plateau",
                                                                          "train_loss")
    np.testing.assert_allclose(plateau[:2], constant[:2], rtol=1e-6)
    assert abs(plateau[2] - constant[2]) > 1e-3 * constant[2]


def test_keras_fit_reports_a_penalised_model_s_held_out_loss_without_its_penalty(monkeypatch):
    """mlp_l2 trains on cross-entropy plus an L2 penalty on its weights; the held-out numbers
    are the cross-entropy alone (evaluate's own "loss" would add the penalty)."""
    import keras
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    rng = np.random.default_rng(0)
    data = {split: (rng.uniform(size=(64, 784)).astype(np.float32),
                    rng.integers(0, 10, 64).astype(np.int32))
            for split in ("train", "validation", "test")}
    built = []
    model_on_dataset = keras_fit.model_on_dataset
    monkeypatch.setattr(keras_fit, "model_on_dataset",
                        lambda *args: built.append(model_on_dataset(*args)) or built[-1])
    with flagsaver.flagsaver(epochs=1, batch_size=16):
        [epoch] = keras_fit.run("mlp_l2", ("adam", 0.01, "constant"), 0, data)
    [model] = built
    penalty = float(sum(model.losses))
    assert penalty > 0.05
    for split, (x, y) in data.items():
        if split != "train":
            cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
                y, model(x, training=False))
            np.testing.assert_allclose(epoch[f"{split}_loss"], float(cross_entropy), rtol=1e-5)


def test_keras_fit_builds_every_model_with_the_output_its_task_needs():
    keras_fit = load_experiment("keras_fit")
    width = {"reconstruct": 784, "regress": 1}
    for name in keras_fit.ALL_MODELS:
        outputs = keras_fit.build_model(name)(np.zeros((3, 784), np.float32))
        assert tuple(outputs.shape) == (3, width.get(keras_fit.TASKS.get(name), 10)), name


def test_keras_fit_makes_only_the_named_model_and_keys_runs_by_its_initial_weights():
    """Unseeded initializers draw their seeds when their layer is made: were every model's
    layers made first, the logistic regression would not start from the weights of the same
    layer made alone."""
    import keras

    keras_fit = load_experiment("keras_fit")
    keras.utils.set_random_seed(3)
    alone = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    keras.utils.set_random_seed(3)
    for made_alone, built in zip(alone.weights, keras_fit.build_model("logistic").weights,
                                 strict=True):
        np.testing.assert_array_equal(made_alone.numpy(), built.numpy())
    fingerprints = [keras_fit.initial_weights_fingerprint(name, seed)
                    for name in ("logistic", "mlp_relu") for seed in (0, 1)]
    assert len(set(fingerprints)) == 4
    keras_fit.initial_weights_fingerprint.cache_clear()
    assert keras_fit.initial_weights_fingerprint("mlp_relu", 1) == fingerprints[3]


def test_keras_fit_choice_of_adam_reads_the_validation_split_only():
    """Where validation and test disagree, the validation split decides: with the choice
    made on the test split this fails."""
    keras_fit = load_experiment("keras_fit")
    runs = {rate: {0: [{"validation_loss": validation, "test_loss": test}]}
            for rate, validation, test in [(0.001, 0.30, 0.10), (0.01, 0.20, 0.40),
                                           (0.03, np.nan, 0.05)]}
    results = {("m", ("adam", rate, "constant")): per_seed for rate, per_seed in runs.items()}
    results[("m", ("default", 1.0, "constant"))] = {0: [{"validation_loss": 0.0,
                                                         "test_loss": 0.0}]}
    best, scores = keras_fit.best_adam_rate(results, "m", [0], epoch=1)
    assert best == 0.01 and scores[0.03] == np.inf  # diverged (NaN) never wins


def test_cached_learned_runs_are_keyed_by_the_contents_of_their_nets_files(tmp_path):
    """keras_fit.py and reproduce.py key a learned optimizer's cached runs by this: a copy
    of the files has the same key, a change of their contents another."""
    shipped = l2l_tf.presets.pretrained_path(l2l_tf.presets.DEFAULT_PRETRAINED)
    fingerprint = l2l_tf.networks.nets_fingerprint
    assert fingerprint(shipped) == fingerprint(copy_of_the_shipped_default(tmp_path, "copy"))
    changed = copy_of_the_shipped_default(tmp_path, "changed", max_factor=10.0)
    assert fingerprint(shipped) != fingerprint(changed)


def test_keras_fit_default_nets_runs_a_candidate_as_default_keyed_by_its_contents(tmp_path):
    """A candidate run as `default` (--default_nets) is keyed by its nets' contents: a copy of
    the shipped files makes the shipped default's keys (so a candidate's runs are found once
    its file ships), changed nets another key, and `default` then steps with those nets."""
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    copy = copy_of_the_shipped_default(tmp_path, "copy")
    changed = copy_of_the_shipped_default(tmp_path, "changed", max_factor=10.0)
    default = ("default", 1.0, "constant")
    keys, optimizers = {}, {}
    for nets in (None, copy, changed):
        with flagsaver.flagsaver(default_nets=nets):
            keys[nets] = keras_fit.run_key("logistic", default, 0)
            optimizers[nets] = keras_fit.build_optimizer(default, total_steps=1)
    assert keys[copy] == keys[None] != keys[changed]
    assert keys[changed].startswith("logistic|default 1|")
    assert [net.max_factor for net in optimizers[changed].nets.values()] == [10.0]
    shipped_options = l2l_tf.LearnedOptimizer().nets["tensorwise"].get_config()
    assert [net.max_factor for net in optimizers[None].nets.values()] == [
        shipped_options["max_factor"]]


def test_keras_fit_runs_only_caches_a_candidate_s_runs_and_leaves_the_table(
        tmp_path, monkeypatch, mnist_data_dir):
    """--runs_only with --default_nets adds the candidate's runs to the table's cache under the
    keys the shipped default will have, and writes no table: the committed table still shows
    the shipped default. The same command without the two flags, once those nets ship, finds
    every run in the cache and runs nothing."""
    from absl import flags as absl_flags
    from absl.testing import flagsaver

    keras_fit = load_experiment("keras_fit")
    made = []

    def run(model_name, optimizer, seed, data):  # a run's record, without the minutes of fit
        made.append((model_name, optimizer[0], seed))
        loss = 0.5 + 0.1 * seed + 0.01 * len(made)
        return [{"seconds": 1.0, "train_loss": loss, "validation_loss": loss,
                 "validation_accuracy": 0.9, "test_loss": loss, "test_accuracy": 0.9}]

    monkeypatch.setattr(keras_fit, "run", run)
    table = tmp_path / "fit.md"
    table.write_text("the shipped default's table\n")
    candidate = copy_of_the_shipped_default(tmp_path, "candidate", max_factor=10.0)
    command = ["keras_fit.py", "--models=logistic", "--epochs=1", "--seeds=0,1",
               "--adam_grid=0.001", "--optimizers=default@1", "--validation_examples=50000",
               f"--output={table}"]
    with flagsaver.flagsaver():
        absl_flags.FLAGS([*command, f"--default_nets={candidate}", "--runs_only"])
        keras_fit.main([])
        keys = [keras_fit.run_key("logistic", ("default", 1.0, "constant"), seed)
                for seed in (0, 1)]
    assert sorted(made) == [("logistic", "adam", 0), ("logistic", "adam", 1),
                            ("logistic", "default", 0), ("logistic", "default", 1)]
    assert table.read_text() == "the shipped default's table\n"
    assert sorted(os.listdir(tmp_path)) == ["candidate", "fit.md", "fit_runs.json"]
    with open(tmp_path / "fit_runs.json") as f:
        cache = json.load(f)
    assert set(keys) <= set(cache) and len(cache) == 4

    made.clear()
    monkeypatch.setattr(keras_fit.presets, "DEFAULT_PRETRAINED", candidate)  # it ships
    with flagsaver.flagsaver():
        absl_flags.FLAGS(command)
        keras_fit.main([])
    assert made == [] and "the shipped default's table" not in table.read_text()
    row = next(line for line in table.read_text().splitlines() if line.startswith("| logistic"))
    candidate_mean = np.mean([cache[key][0]["test_loss"] for key in keys])
    assert row.split(" | ")[-1].startswith(f"{candidate_mean:.4f}")


def test_keras_fit_runs_only_leaves_a_run_whose_shipped_twin_another_machine_drew(
        tmp_path, monkeypatch, capsys, mnist_data_dir):
    """--runs_only makes no candidate run whose shipped twin the cache holds only from other
    initial weights (another CPU's orthogonal initializer): that run would fit neither the
    table drawn there nor, without its Adam and shipped runs, one drawn here. A seed whose
    twin is cached from these weights is made; so is one with no shipped run at all."""
    from absl import flags as absl_flags
    from absl.testing import flagsaver

    keras_fit = load_experiment("keras_fit")
    made = []

    def run(model_name, optimizer, seed, data):
        made.append((optimizer[0], seed))
        return [{"seconds": 1.0, "train_loss": 0.5, "validation_loss": 0.5,
                 "validation_accuracy": 0.9, "test_loss": 0.5, "test_accuracy": 0.9}]

    monkeypatch.setattr(keras_fit, "run", run)
    table = tmp_path / "fit.md"
    candidate = copy_of_the_shipped_default(tmp_path, "candidate", max_factor=10.0)
    command = ["keras_fit.py", "--models=logistic", "--epochs=1", "--seeds=0,1,2",
               "--adam_grid=0.001", "--optimizers=default@1", "--validation_examples=50000",
               f"--output={table}"]
    with flagsaver.flagsaver():
        absl_flags.FLAGS(command)
        shipped = {seed: keras_fit.run_key("logistic", ("default", 1.0, "constant"), seed)
                   for seed in (0, 1)}
        adam = keras_fit.run_key("logistic", ("adam", 0.001, "constant"), 1)
    record = run("logistic", ("adam",), 0, None)
    init = shipped[1].split("|init ")[1].split("|")[0]
    cache = {shipped[0]: record, adam: record,  # seed 1: drawn elsewhere, Adam's run too
             shipped[1].replace(f"|init {init}", "|init 000000000000"): record}
    (tmp_path / "fit_runs.json").write_text(json.dumps(cache))
    made.clear()
    with flagsaver.flagsaver():
        absl_flags.FLAGS([*command, f"--default_nets={candidate}", "--runs_only"])
        keras_fit.main([])
    assert sorted(made) == [("adam", 0), ("adam", 2), ("default", 0), ("default", 2)]
    assert ("logistic default 1 seed 1: not made, the shipped default's run is from other "
            "initial weights (another machine's); run this command there.") in (
                capsys.readouterr().out)


def test_remake_makes_a_candidate_s_runs_for_every_table_once_and_leaves_the_tables(
        tmp_path, mnist_data_dir):
    """remake.py runs each keras_fit table's own command for the candidate (--runs_only):
    the ledger goes from none remade to all, the table stays as it was, the cache gains the
    candidate's runs under the shipped default's future key, a run the candidate's own table
    holds under its path is copied rather than made, a second table of the same runs copies
    them all and starts no keras_fit.py, and the same command again runs nothing. A table
    made by another script is not in the ledger."""
    table = tmp_path / "keras_fit_tiny.md"
    made = script("keras_fit.py", "--models=logistic", "--epochs=1", "--seeds=0,1",
                  "--adam_grid=0.001", "--optimizers=default@1", "--train_examples=256",
                  "--validation_examples=2000", f"--output={table}")
    assert made.returncode == 0, made.stderr
    text = table.read_text()
    # A second table of the same runs: the runs made for the first serve it too.
    second = tmp_path / "keras_fit_tiny2.md"
    second.write_text(text.replace(str(table), str(second)))
    shutil.copy(tmp_path / "keras_fit_tiny_runs.json", tmp_path / "keras_fit_tiny2_runs.json")
    (tmp_path / "keras_fit_other.md").write_text("Command: `python experiments/reproduce.py`\n")
    candidate = copy_of_the_shipped_default(tmp_path, "candidate", max_factor=10.0)
    fingerprint = l2l_tf.networks.nets_fingerprint(candidate)
    with open(tmp_path / "keras_fit_tiny_runs.json") as f:
        shipped_runs = {int(key.split("|")[2].removeprefix("seed ")): (key, run)
                        for key, run in json.load(f).items() if "|default 1|" in key}
    # The candidate's own table (not a keras_fit* one) holds its seed-0 run under its path;
    # a made-up run, to tell it from one the remake would make.
    key, run = shipped_runs[0]
    own_run = [{**epoch, "validation_loss": 1.5 * epoch["validation_loss"]} for epoch in run]
    own_key = "|".join([key.split("|")[0], f"{candidate} 1", *key.split("|")[2:-1],
                        f"nets {fingerprint}"])
    (tmp_path / "candidate_own_runs.json").write_text(json.dumps({own_key: own_run}))
    remake = ["remake.py", f"--default_nets={candidate}", f"--results={tmp_path}"]

    first = script(*remake)
    assert first.returncode == 0, first.stderr
    before, after = first.stdout.split("After the remake:")
    with open(tmp_path / "keras_fit_tiny_runs.json") as f:
        cache = json.load(f)
    twins = {seed: cache[key.removesuffix(key.split("|")[-1]) + f"nets {fingerprint}"]
             for seed, (key, _) in shipped_runs.items()}
    assert twins[0] == own_run
    log_ratios = [math.log(twins[seed][-1]["validation_loss"] / run[-1]["validation_loss"])
                  for seed, (_, run) in shipped_runs.items()]
    assert log_ratios[1] != 0  # a larger bound on the step: another run
    for name in ("keras_fit_tiny", "keras_fit_tiny2"):
        assert f"| {name} | 2 | 0 | 0 | - | " in before
        assert f"| {name} | 2 | 2 | 0 | {sum(log_ratios) / 2:+.4f} | 0.0 |" in after
    assert "keras_fit_other" not in first.stdout and "candidate_own" not in first.stdout
    assert first.stdout.count("default 1 ") == 1  # the one run made, printed by keras_fit.py
    assert ("Remaking keras_fit_tiny (1 of its runs copied from other tables' caches)"
            in first.stdout)
    assert "Remade keras_fit_tiny2 from other tables' caches (2 runs)." in first.stdout
    assert table.read_text() == text
    for name in ("keras_fit_tiny", "keras_fit_tiny2"):
        with open(tmp_path / f"{name}_runs.json") as f:
            keys = list(json.load(f))
        assert [k.split("|")[:3] for k in keys if k.endswith(f"|nets {fingerprint}")] == [
            ["logistic", "default 1", "seed 0"], ["logistic", "default 1", "seed 1"]]

    again = script(*remake)
    assert again.returncode == 0, again.stderr
    assert "Remaking" not in again.stdout and "After the remake" in again.stdout


def test_remake_ledger_counts_the_remade_runs_the_same_to_the_bit_but_the_seconds(tmp_path):
    """A remade run is the same as the shipped default's if every number but the seconds is
    (two runs of one computation differ in their wall times alone); the mean log ratio is
    over the remade runs' validation losses, and the minutes left are those of the runs
    without a twin."""
    candidate = copy_of_the_shipped_default(tmp_path, "candidate", max_factor=10.0)
    fingerprints = {"old": l2l_tf.networks.nets_fingerprint(
        l2l_tf.presets.pretrained_path(l2l_tf.presets.DEFAULT_PRETRAINED)),
        "new": l2l_tf.networks.nets_fingerprint(candidate)}

    def run(loss, seconds):
        return [{"seconds": seconds, "validation_loss": loss, "test_loss": loss}]

    cache = {}
    for model, (shipped, remade) in {"a": (run(0.5, 9.0), run(0.5, 9.0)),
                                     "b": (run(0.5, 9.0), run(0.5, 7.0)),
                                     "c": (run(0.5, 9.0), run(0.4, 8.0)),
                                     "d": (run(0.5, 60.0), None)}.items():
        for nets, record in (("old", shipped), ("new", remade)):
            if record:
                cache[f"{model}|default 1|seed 0|nets {fingerprints[nets]}"] = record
    table = tmp_path / "keras_fit_t.md"
    table.write_text(f"Command: `python experiments/keras_fit.py --output={table}`\n")
    (tmp_path / "keras_fit_t_runs.json").write_text(json.dumps(cache))
    ledger = script("remake.py", f"--default_nets={candidate}", f"--results={tmp_path}",
                    "--dry_run")
    assert ledger.returncode == 0, ledger.stderr
    assert f"| keras_fit_t | 4 | 3 | 2 | {math.log(0.8) / 3:+.4f} | 1.0 |" in ledger.stdout


def test_keras_fit_states_a_standard_error_only_over_several_seeds():
    keras_fit = load_experiment("keras_fit")
    assert keras_fit.mean_and_error([0.25]) == "0.2500"  # one seed: no "± nan"
    assert keras_fit.mean_and_error([0.2, 0.4]) == "0.3000 ± 0.1000"


def test_keras_fit_validation_split_is_held_out_of_training():
    keras_fit = load_experiment("keras_fit")
    images, labels = np.arange(100), np.arange(100) % 10
    (train_x, _), (validation_x, _) = keras_fit.split_train_validation(images, labels, 30)
    assert len(validation_x) == 30 and len(train_x) == 70
    assert not set(train_x) & set(validation_x)
    (few_x, _), (validation_x2, _) = keras_fit.split_train_validation(images, labels, 30, 20)
    assert list(few_x) == list(range(20)) and list(validation_x2) == list(validation_x)


def test_keras_fit_holds_out_a_bundled_data_set_s_test_split_and_standardises_with_training_only():
    """On scikit-learn's wine table: the last fifth of the one shuffle is the test split, a
    quarter of the rest validation; the features are standardised with the training
    examples' mean and deviation alone, so validation and test are not exactly standardised.
    The diabetes regression's target is standardised the same way."""
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    raw_x, raw_y = keras_fit.dataset_splits("wine")["train"]
    raw_test_x, raw_test_y = keras_fit.dataset_splits("wine")["test"]
    assert (len(raw_y), len(raw_test_y)) == (143, 35)
    with flagsaver.flagsaver(dataset="wine"):
        data = keras_fit.load_data()
        model = keras_fit.model_on_dataset("quickstart", "wine")
    assert {split: len(y) for split, (_, y) in data.items()} == {
        "train": 108, "validation": 35, "test": 35}
    mean, std = raw_x[:108].mean(0), raw_x[:108].std(0)
    np.testing.assert_allclose(data["train"][0].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(data["train"][0].std(0), 1, rtol=1e-4)
    np.testing.assert_allclose(data["test"][0], (raw_test_x - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data["validation"][1], raw_y[108:])
    np.testing.assert_array_equal(data["test"][1], raw_test_y)
    assert np.abs(data["test"][0].mean(0)).max() > 0.05  # not standardised on itself
    assert tuple(model(data["test"][0]).shape) == (35, 3)  # 13 features in, 3 classes out

    with flagsaver.flagsaver(dataset="diabetes", train_examples=100):
        data = keras_fit.load_data()
        model = keras_fit.model_on_dataset("mlp_relu", "diabetes")
    raw_y = keras_fit.dataset_splits("diabetes")["train"][1]
    assert data["train"][1].dtype == np.float32 and len(data["train"][1]) == 100
    np.testing.assert_allclose(data["train"][1].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(data["test"][1], (keras_fit.dataset_splits("diabetes")["test"][1]
                                                 - raw_y[:100].mean()) / raw_y[:100].std(),
                               rtol=1e-5, atol=1e-5)
    assert tuple(model(data["test"][0]).shape) == (88, 1)


def test_keras_fit_unstandardised_data_are_as_loaded_and_keyed_apart():
    """--unstandardised: the splits are the standardised ones' examples with the features, and
    a regression's target, as scikit-learn loads them, and the runs are keyed apart."""
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    raw_x, raw_y = keras_fit.dataset_splits("diabetes")["train"]
    with flagsaver.flagsaver(dataset="diabetes"):
        scaled_key = keras_fit.run_key("mlp_relu", ("default", 1.0, "constant"), 0)
    with flagsaver.flagsaver(dataset="diabetes", unstandardised=True):
        data = keras_fit.load_data()
        key = keras_fit.run_key("mlp_relu", ("default", 1.0, "constant"), 0)
    np.testing.assert_array_equal(data["train"][0], raw_x[:266])
    np.testing.assert_array_equal(data["validation"][1], raw_y[266:])
    np.testing.assert_array_equal(data["test"][1], keras_fit.dataset_splits("diabetes")["test"][1])
    assert data["train"][1].mean() > 100  # the target in its own units
    assert key == scaled_key.replace("|init ", "|unstandardised|init ")


def test_keras_fit_generates_its_two_data_sets_once_at_mnist_s_size():
    """--dataset=classification and friedman1: scikit-learn's generators with the arguments
    the module names, drawn with the one seed whatever --seeds says (the same examples in
    every process), split as the shipped tables are and standardised on training alone."""
    from absl.testing import flagsaver
    from sklearn import datasets

    keras_fit = keras_fit_with_flags_parsed()
    for name, classes in [("classification", 10), ("friedman1", None)]:
        keras_fit.dataset_splits.cache_clear()  # a second draw, as another process makes
        (x, y), (test_x, test_y) = keras_fit.dataset_splits(name).values()
        drawn_x, drawn_y = getattr(datasets, f"make_{name}")(
            random_state=0, **keras_fit.GENERATED_DATASETS[name])
        order = np.random.default_rng(0).permutation(60000)
        np.testing.assert_array_equal(np.concatenate([x, test_x]),
                                      drawn_x[order].astype(np.float32))
        np.testing.assert_array_equal(np.concatenate([y, test_y]), drawn_y[order].astype(y.dtype))
        with flagsaver.flagsaver(dataset=name, seeds=["3"]):
            data = keras_fit.load_data()
            model = keras_fit.model_on_dataset("mlp_relu", name)
        assert {split: len(y) for split, (_, y) in data.items()} == {
            "train": 36000, "validation": 12000, "test": 12000}
        np.testing.assert_allclose(data["train"][0].std(0), 1, rtol=1e-3)
        assert np.abs(data["test"][0].mean(0)).max() > 1e-3  # not standardised on itself
        if classes:
            assert y.dtype == np.int32 and set(y) == set(range(classes))
        else:
            assert data["train"][1].dtype == np.float32
            np.testing.assert_allclose(data["train"][1].std(), 1, rtol=1e-3)
        assert tuple(model(data["test"][0][:5]).shape) == (5, classes or 1)


def test_generated_reviews_carry_their_label_in_a_few_words_of_a_zipf_vocabulary():
    """experiments/reviews.py: word ids padded with 0 at the end, the same for the same seed;
    the commonest ids make up much of the text, yet say nothing of the class; word counts
    learnt on half the reviews classify the other half well, not perfectly (no word decides)."""
    reviews = load_experiment("reviews")
    x, y = reviews.make_reviews(4000, random_state=0)
    assert x.shape == (4000, reviews.LENGTH) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(reviews.make_reviews(4000, random_state=0)[0], x)
    assert not np.array_equal(reviews.make_reviews(4000, random_state=1)[0], x)
    lengths = (x > 0).sum(1)
    assert lengths.min() >= 20 and x.max() < reviews.VOCABULARY and 0.45 < y.mean() < 0.55
    np.testing.assert_array_equal(x[np.arange(reviews.LENGTH) >= lengths[:, None]], 0)
    counts = np.bincount(x[x > 0], minlength=reviews.VOCABULARY)
    assert counts[1] > counts[10] > counts[1000] and counts[1:51].sum() > 0.3 * counts.sum()

    half = len(y) // 2
    bags = np.stack([np.bincount(row[row > 0], minlength=reviews.VOCABULARY) for row in x])
    per_class = np.stack([bags[:half][y[:half] == c].sum(0) + 1.0 for c in (0, 1)])
    log_odds = np.log(per_class[1] / per_class[1].sum() / (per_class[0] / per_class[0].sum()))

    def held_out_accuracy(words):
        """Naive Bayes on the counts of `words`, fit on the first half, on the second."""
        return np.mean((bags[half:, words] @ log_odds[words] > 0) == y[half:])

    common = np.arange(1, 51)
    assert held_out_accuracy(common) < 0.56  # chance
    # the words the first half holds at least 40 times, which a model learns first
    seen = np.flatnonzero(per_class.sum(0) >= 40)
    assert 0.75 < held_out_accuracy(np.setdiff1d(seen, common)) < 0.95


def test_keras_fit_reviews_are_word_ids_held_out_as_the_other_data_sets_and_read_by_text_models():
    """--dataset=reviews: IMDB's 25,000 training reviews and a test fifth beside them, split
    as the other data sets are and not standardised (`Embedding` reads the ids); its
    default models are the text models, whose output is one logit per class."""
    import keras
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    reviews = load_experiment("reviews")
    with flagsaver.flagsaver(dataset="reviews"):
        data = keras_fit.load_data()
        names = keras_fit.model_names()
        model = keras_fit.model_on_dataset("text_bag", "reviews")
    assert {split: len(y) for split, (_, y) in data.items()} == {
        "train": 18750, "validation": 6250, "test": 6250}
    x, y = reviews.make_reviews(31250, random_state=0)
    order = np.random.default_rng(0).permutation(31250)
    np.testing.assert_array_equal(data["test"][0], x[order][25000:].astype(np.float32))
    np.testing.assert_array_equal(data["validation"][1], y[order][18750:25000])
    assert names == ["text_bag", "text_cnn", "text_transformer"]
    for model in (model, *(keras_fit.model_on_dataset(name, "reviews")
                           for name in ("text_cnn", "text_transformer"))):
        assert tuple(model(data["test"][0][:5]).shape) == (5, 2)
        embedding = next(layer for layer in model.layers
                         if isinstance(layer, keras.layers.Embedding))
        assert embedding.input_dim == reviews.VOCABULARY


def test_keras_fit_label_noise_relabels_training_and_validation_but_not_test():
    """--label_noise=0.3 on the wine table: 30% of the training and of the validation labels
    become another class, the same ones whatever the seed; features and the test split are
    untouched, and the runs are keyed apart from those on true labels."""
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    with flagsaver.flagsaver(dataset="wine"):
        true = keras_fit.load_data()
        true_key = keras_fit.run_key("quickstart", ("default", 1.0, "constant"), 0)
    with flagsaver.flagsaver(dataset="wine", label_noise=0.3, seeds=["1"]):
        noisy = keras_fit.load_data()
        again = keras_fit.load_data()
        noisy_key = keras_fit.run_key("quickstart", ("default", 1.0, "constant"), 0)
    for split, relabelled in [("train", 32), ("validation", 10), ("test", 0)]:  # of 108, 35, 35
        (x, y), (noisy_x, noisy_y) = true[split], noisy[split]
        np.testing.assert_array_equal(noisy_x, x)
        assert np.sum(noisy_y != y) == relabelled, split
        assert set(noisy_y) <= {0, 1, 2} and noisy_y.dtype == y.dtype
        np.testing.assert_array_equal(again[split][1], noisy_y)
    assert noisy_key == true_key.replace("|data wine|", "|data wine|label noise 0.3|")


def test_keras_fit_raw_pixels_are_mnists_as_stored_and_keyed_apart(mnist_data_dir):
    """--raw_pixels: every split's images are the stored 0-255 values (255 times the usual
    input), the labels and splits unchanged, and the runs keyed apart from scaled ones."""
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    with flagsaver.flagsaver(train_examples=500, validation_examples=300):
        scaled = keras_fit.load_data()
        scaled_key = keras_fit.run_key("mlp_relu", ("default", 1.0, "constant"), 0)
    with flagsaver.flagsaver(train_examples=500, validation_examples=300, raw_pixels=True):
        raw = keras_fit.load_data()
        raw_key = keras_fit.run_key("mlp_relu", ("default", 1.0, "constant"), 0)
    for split in ("train", "validation", "test"):
        (x, y), (raw_x, raw_y) = scaled[split], raw[split]
        np.testing.assert_array_equal(raw_y, y)
        np.testing.assert_allclose(raw_x, 255 * x, rtol=1e-6)
        assert raw_x.max() == 255 and raw_x.dtype == np.float32, split
    assert raw_key == scaled_key.replace("|init ", "|raw pixels|init ")


def test_keras_fit_fine_tuning_splits_the_digits_and_starts_from_pretrained_weights(
        mnist_data_dir):
    """--pretrain_classes=0,1,2,3,4: pretraining sees only those digits of the training
    part; training, validation and test only the others (training: the first
    --train_examples of them). A fine-tuned model starts from the pretrained weights but its
    own initial last layer; with --fine_tune=head only that layer trains."""
    import keras
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    with flagsaver.flagsaver(pretrain_classes=["4", "0", "1", "2", "3"], train_examples=300,
                             pretrain_epochs=1, fine_tune="head"):
        data = keras_fit.load_data()
        key = keras_fit.run_key("mlp_relu", ("adam", 0.001, "constant"), 0)
        (images, labels), (test_images, test_labels) = [
            l2l_tf.problems.load_tfds("mnist", mode) for mode in ("train", "test")]
        part = labels[:50000]
        assert set(data["pretrain"][1]) == {0, 1, 2, 3, 4}
        assert len(data["pretrain"][1]) == np.sum(part < 5)
        for split, count in [("train", 300), ("validation", np.sum(labels[50000:] >= 5)),
                             ("test", np.sum(test_labels >= 5))]:
            assert set(data[split][1]) == {5, 6, 7, 8, 9} and len(data[split][1]) == count
        first = np.flatnonzero(part >= 5)[:300]
        np.testing.assert_array_equal(data["train"][0],
                                      images[first].reshape(-1, 784).astype(np.float32) / 255)
        test_digits = test_images[test_labels >= 5].reshape(-1, 784).astype(np.float32)
        np.testing.assert_array_equal(data["test"][0], test_digits / 255)

        keras.utils.set_random_seed(0)
        model = keras_fit.build_model("mlp_relu")
        initial = model.get_weights()
        keras_fit.start_from_pretrained(model, "mlp_relu", 0, (data["pretrain"][0][:512],
                                                              data["pretrain"][1][:512]))
    assert "|pretrain 01234 x1 then head|" in key
    *base, kernel, bias = model.get_weights()
    np.testing.assert_array_equal(kernel, initial[-2])  # a new head: its initial draw
    np.testing.assert_array_equal(bias, initial[-1])
    np.testing.assert_array_equal(base[0], keras_fit.PRETRAINED_WEIGHTS[("mlp_relu", 0)][0])
    assert not np.allclose(base[0], initial[0])  # the base was pretrained
    assert [w.path for w in model.trainable_weights] == [w.path for w in model.layers[-1].weights]


def test_keras_fit_second_task_carries_the_optimizer_over_or_renews_it(mnist_data_dir):
    """--fine_tune=continue: the optimizer that trained the model on the first digits goes on
    to the others (its step count carried over, the last layer kept, nothing from Adam());
    renew: a new optimizer of the same kind takes the second task."""
    import keras
    from absl.testing import flagsaver

    keras_fit = keras_fit_with_flags_parsed()
    seen = []
    real_fit = keras.Model.fit

    def recording_fit(model, x, *args, **kwargs):
        seen.append((model.optimizer, len(x), int(model.optimizer.iterations)))
        return real_fit(model, x, *args, **kwargs)

    for mode in ("continue", "renew"):
        seen.clear()
        with flagsaver.flagsaver(pretrain_classes=["0", "1"], train_examples=256, epochs=1,
                                 pretrain_epochs=1, batch_size=128, fine_tune=mode), \
                mock.patch.object(keras.Model, "fit", recording_fit), \
                mock.patch.object(keras_fit, "start_from_pretrained",
                                  side_effect=AssertionError("pretrained with Adam()")):
            data = keras_fit.load_data()
            data["pretrain"] = tuple(part[:384] for part in data["pretrain"])
            epochs = keras_fit.run("mlp_relu", ("default", 1.0, "constant"), 0, data)
            key = keras_fit.run_key("mlp_relu", ("default", 1.0, "constant"), 0)
        assert f"then {mode}|" in key
        (first, first_size, first_start), (second, second_size, second_start) = seen
        assert (first_size, second_size) == (384, 256)
        assert first_start == 0
        if mode == "continue":
            assert second is first and second_start == 3  # 384 images: three steps
        else:
            assert second is not first and second_start == 0
        assert isinstance(second, l2l_tf.LearnedOptimizer)
        assert np.isfinite(epochs[0]["test_loss"])


def test_keras_fit_gradient_ratio_is_the_largest_over_every_step_and_tensor():
    """--gradient_ratio's callback reads `gradient_rms_ratio` after every step of `fit`: what
    it reports is the largest over the steps and tensors as read step by step (a burst of
    large gradients mid-run, not the last step's), and `take()` then forgets it."""
    import tensorflow as tf

    keras_fit = keras_fit_with_flags_parsed()
    net = l2l_tf.networks.TensorwiseLSTM(layers=(4,), decay_steps=3, gradient_decay=2.0)
    x, y = burst_regression()
    monitor = keras_fit.LargestGradientRatio()
    model_stepped_by(net).fit(x, y, batch_size=8, shuffle=False, epochs=1, verbose=0,
                              callbacks=[monitor])
    reported = monitor.take()
    model = model_stepped_by(net)
    read = []
    for batch in range(16):
        model.train_on_batch(x[8 * batch:8 * batch + 8], y[8 * batch:8 * batch + 8])
        read.append(max(float(net.gradient_rms_ratio([tf.convert_to_tensor(s) for s in states]))
                        for states in model.optimizer.states))
    assert read[:3] == [1.0] * 3 and max(read) > 1.2 * read[-1] > 2
    np.testing.assert_allclose(reported, max(read), rtol=1e-5)
    assert np.isnan(monitor.take())


def test_keras_fit_restart_count_is_every_tensor_whose_step_count_went_back_to_zero():
    """--gradient_ratio also counts restarts: a burst of large gradients mid-run restarts
    tensors (their state zeroed, step count with it), which the ratio read after that step
    cannot show; the count is the number of step counts read back at 0 from one step to the
    next, and `take()` then forgets it. A net without a restart reads NaN."""
    keras_fit = keras_fit_with_flags_parsed()
    net = l2l_tf.networks.TensorwiseLSTM(layers=(4,), decay_steps=3, gradient_decay=2.0,
                                         restart_ratio=1.5)
    x, y = burst_regression()
    monitor = keras_fit.RestartCount()
    model_stepped_by(net).fit(x, y, batch_size=8, shuffle=False, epochs=1, verbose=0,
                              callbacks=[monitor])
    reported = monitor.take()
    model = model_stepped_by(net)
    counts, restarts = None, 0
    for batch in range(16):
        model.train_on_batch(x[8 * batch:8 * batch + 8], y[8 * batch:8 * batch + 8])
        now = [float(states[2].numpy()[0]) for states in model.optimizer.states]
        if counts is not None:
            restarts += sum(n == 0 and c > 0 for n, c in zip(now, counts))
        counts = now
    assert restarts >= 2 and reported == restarts
    assert monitor.take() == 0
    without = keras_fit.RestartCount()
    model_stepped_by(l2l_tf.networks.TensorwiseLSTM(layers=(4,), decay_steps=3,
                                                    gradient_decay=2.0)
                     ).fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[without])
    assert np.isnan(without.take())


def test_keras_fit_fine_tuning_table_names_its_digits(tmp_path, mnist_data_dir):
    output = tmp_path / "fit.md"
    result = script("keras_fit.py", "--models=quickstart", "--pretrain_classes=0,1,2,3,4",
                    "--pretrain_epochs=1", "--train_examples=512", "--epochs=2", "--seeds=0",
                    "--adam_grid=0.001", "--optimizers=default@1", "--gradient_ratio",
                    f"--output={output}")
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    # 8 steps, all before the default's reference step 700: the ratio is 1 by definition.
    ratios = text.split("Largest gradient RMS ratio")[1].split("\n\n")[1].splitlines()
    assert ratios == ["| model | default 1 |", "| --- | --- |", "| quickstart | 1.00 (1.00) |"]
    restarts = text.split("Tensor restarts")[1].split("\n\n")[1].splitlines()
    assert restarts == ["| model | default 1 |", "| --- | --- |", "| quickstart | 0.0 (0) |"]
    assert ("MNIST's digits 5-9 only (training, validation and test), fine-tuned from Adam() "
            "after 1 epochs on the train split's 25,") in text
    assert "trained on the first 512 images of the train split's digits 5-9" in text
    assert ("Adam's rate chosen on the 4,909 images of those digits among the train split's "
            "last 10,000 (validation)") in text
    assert "every number below is on the 4,861 images of the test split" in text
    rows = [line.split(" | ") for line in text.split("Test loss after each epoch")[1]
            .split("\n\n")[1].splitlines()[2:]]
    assert [row[1] for row in rows] == ["adam 0.001", "default 1"]
    for row in rows:  # the new head learns the new digits
        first, second = float(row[2]), float(row[3].rstrip(" |"))
        assert 0 < second < first, row


def test_keras_fit_on_a_bundled_regression_reports_its_loss_and_no_accuracy(tmp_path):
    output = tmp_path / "fit.md"
    result = script("keras_fit.py", "--dataset=diabetes", "--models=mlp_relu", "--epochs=2",
                    "--seeds=0", "--adam_grid=0.001", "--optimizers=default@1",
                    "--batch_size=32", f"--output={output}")
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert ("scikit-learn's diabetes data set, shuffled once, its features standardised with the "
            "training examples' mean and deviation; trained on the first 266 examples") in text
    assert "Adam's rate chosen on the last 88 (validation)" in text
    assert "the 88 examples of the test split" in text
    assert "Loss: the squared error of the standardised target (no accuracy)." in text
    row = next(line for line in text.splitlines() if line.startswith("| mlp_relu | "))
    assert "%" not in row and len(row.split(" | ")) == 4  # Adam(), best constant Adam, default
    cache = json.loads((tmp_path / "fit_runs.json").read_text())
    assert len(cache) == 2 and all("|data diabetes|" in key for key in cache)


def burst_regression():
    """128 examples of a linear regression whose targets are 30x larger in batches 5-7 (of
    16 at batch size 8): a burst of large gradients mid-run, with a gradient decay's
    reference read before it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 5)).astype(np.float32)
    scale = np.repeat([1.0] * 5 + [30.0] * 3 + [1.0] * 8, 8).astype(np.float32)
    return x, (scale * x.sum(axis=1))[:, None]


def model_stepped_by(net):
    """A small regression MLP, the same initial weights every call, compiled with a
    `LearnedOptimizer` of `net`."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=l2l_tf.LearnedOptimizer(nets={"n": net}, seed=0), loss="mse")
    return model


def keras_fit_with_flags_parsed():
    """keras_fit as a module, its flags at their defaults (read by its functions)."""
    keras_fit = load_experiment("keras_fit")
    if not keras_fit.FLAGS.is_parsed():
        keras_fit.FLAGS.mark_as_parsed()
    return keras_fit


def copy_of_the_shipped_default(tmp_path, name, **changed_options):
    """A copy of the shipped default's directory at `tmp_path / name`, its net re-saved
    with `changed_options` if any (same weights): a candidate default."""
    copy = tmp_path / name
    shutil.copytree(l2l_tf.presets.pretrained_path(l2l_tf.presets.DEFAULT_PRETRAINED), copy)
    if changed_options:
        net_file = next(copy.glob("*.npz"))
        net_name, options, weights = l2l_tf.networks.load_weights(str(net_file))
        l2l_tf.networks.save_weights(
            str(net_file), l2l_tf.networks.factory(net_name, {**options, **changed_options}),
            weights)
    return str(copy)


def load_experiment(name):
    """An experiments/ script as a module (its flags are defined once per test process)."""
    import importlib

    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_bad_keras_fit_flags_give_one_line_and_exit_2():
    """The command line's side of a refusal, once for a flag absl rejects and once for one
    the script rejects; the messages are the next test's, in this process."""
    for flag, message in [("--label_noise=1", "1.0 is not a number in the range [0.0, 0.9]"),
                          ("--models=vgg16", "unknown --models ['vgg16']")]:
        result = script("keras_fit.py", flag)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0 and message in result.stderr


def test_bad_remake_flags_give_one_line_and_exit_2(tmp_path):
    shipped = l2l_tf.presets.pretrained_path(l2l_tf.presets.DEFAULT_PRETRAINED)
    candidate = copy_of_the_shipped_default(tmp_path, "candidate", max_factor=10.0)
    for flags, message in [
            ([], "--default_nets is the candidate to make the runs for"),
            ([f"--default_nets={tmp_path}/nope"], "does not exist: give the candidate's"),
            ([f"--default_nets={shipped}"], "holds the shipped default's nets"),
            ([f"--default_nets={candidate}", "--shard=2/2"], "--shard=2/2 must be i/n"),
            ([f"--default_nets={candidate}", f"--results={tmp_path}/none"],
             "is not a directory")]:
        result = script("remake.py", *flags)
        assert result.returncode == 2, (flags, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and message in result.stderr, flags


@pytest.mark.parametrize("flags, message", [
    (["--models=vgg16"], "unknown --models ['vgg16']"),
    (["--optimizers=adam"], "is not name@learning_rate[:cosine|:plateau]"),
    (["--optimizers=adam@0.1:linear"], "is not name@learning_rate[:cosine|:plateau]"),
    (["--adam_grid=0.1,fast"], "is not name@learning_rate[:cosine|:plateau]"),
    (["--optimizers=default@1:weight_decay=0"], "with a positive rate and decay"),
    (["--optimizers=default@1:weight_decay=1:weight_decay=2"], "with a positive rate and decay"),
    (["--optimizers=adam@0.1:plateau:cosine"], "with a positive rate and decay"),
    (["--epochs=3", "--report_epochs=5"], "must lie in 1..--epochs=3"),
    (["--validation_examples=60000"], "leaves nothing to train on"),
    (["--optimizers=nope@1"], "No shipped optimizer named 'nope'"),
    (["--output=fit.txt"], "must end in .md"),
    (["--runs_only"], "--runs_only adds the runs to --output's run cache, and no --output"),
    (["--dataset=wine", "--models=mlp_relu,cnn"],
     "--models=cnn are not made for the features of --dataset=wine: use some of mlp_sigmoid"),
    (["--dataset=reviews", "--models=text_bag,mlp_relu"],
     "--models=mlp_relu are not made for the word ids of --dataset=reviews: use some of "
     "text_bag, text_cnn, text_transformer."),
    (["--models=mlp_relu,text_bag"], "--models=text_bag are not made for the images of"),
    (["--dataset=reviews", "--unstandardised"], "reviews holds word ids, which are never scaled"),
    (["--label_noise=0.2", "--models=mlp_relu,autoencoder"],
     "--models=autoencoder do not classify: leave them out or drop --label_noise"),
    (["--label_noise=1", "--models=mlp_relu"], "1.0 is not a number in the range [0.0, 0.9]"),
    (["--raw_pixels", "--dataset=wine", "--models=mlp_relu"],
     "--raw_pixels keeps MNIST's pixels 0-255, and --dataset=wine has no pixels"),
    (["--unstandardised", "--models=mlp_relu"],
     "--unstandardised leaves a scikit-learn --dataset's features unscaled, and MNIST's are"),
    (["--raw_pixels", "--models=mlp_relu,autoencoder"],
     "--models=autoencoder reconstruct their input through a sigmoid, in [0, 1]"),
    (["--pretrain_classes=0,1,2,3,4,5,6,7,8,9"], "must be some of the digits 0-9, leaving"),
    (["--pretrain_classes=0,x"], "--pretrain_classes=0,x must be some of the digits 0-9"),
    (["--pretrain_classes=0", "--models=cnn,autoencoder"],
     "--models=autoencoder do not classify: leave them out or drop --pretrain_classes"),
    (["--pretrain_classes=0", "--label_noise=0.2", "--models=cnn"],
     "drop --dataset and --label_noise"),
    (["--fine_tune=continue"], "--fine_tune=continue says how to train after --pretrain_classes"),
    (["--pretrain_classes=0", "--fine_tune=renew", "--models=cnn",
      "--optimizers=adam@0.01:cosine"],
     "--fine_tune=renew trains twice, and :cosine decays the rate over one run"),
])
def test_bad_keras_fit_flags_are_refused_before_any_run(flags, message, monkeypatch,
                                                        mnist_data_dir):
    """Parsed and checked in this process as `cli.run` does (a flag error, or a `UsageError`
    or `FileNotFoundError` from `main`), which then prints the message as the one line (the
    test above); a run started instead fails the test at once."""
    from absl import flags as absl_flags
    from absl.testing import flagsaver

    from l2l_tf import cli

    keras_fit = load_experiment("keras_fit")
    monkeypatch.setattr(keras_fit, "cached_runs",
                        lambda *args: pytest.fail(f"{flags} started runs"))
    with flagsaver.flagsaver(), pytest.raises(
            (absl_flags.Error, cli.UsageError, FileNotFoundError)) as refusal:
        absl_flags.FLAGS(["keras_fit.py", *flags])
        keras_fit.main([])
    assert message in str(refusal.value)


def test_a_missing_optional_dependency_is_one_line_naming_the_extra(tmp_path):
    """Without matplotlib (shadowed by a package that fails to import), the scripts that plot
    stop at once with one line that says what to install, and write nothing."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    for name, args in [("reproduce.py", [f"--path={tmp_path}", f"--output_dir={tmp_path}/r"]),
                       ("keras_fit.py", [f"--output={tmp_path}/fit.md"])]:
        result = script(name, *args, env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert 'matplotlib is not installed' in result.stderr
        assert 'pip install ".[experiments]"' in result.stderr
    shadow = tmp_path / "shadow" / "sklearn"  # a data set other than MNIST needs scikit-learn
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named sklearn')\n")
    result = script("keras_fit.py", "--dataset=wine", f"--output={tmp_path}/fit.md", env=env)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "sklearn is not installed" in result.stderr
    assert "pip install scikit-learn" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["shadow"]


def test_same_seed_gives_bitwise_identical_nets_with_op_determinism(tmp_path):
    args = QUICK + ["--problem=quadratic", "--num_steps=10", "--num_epochs=3", "--deterministic",
                    "--evaluation_period=1000"]
    runs = []
    for name in ("a", "b"):
        result = script("train.py", *args, f"--save_path={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        runs.append(np.load(tmp_path / name / "cw.npz"))
    other = script("train.py", *args, "--seed=1", f"--save_path={tmp_path / 'c'}")
    assert other.returncode == 0, other.stderr
    different = np.load(tmp_path / "c" / "cw.npz")
    for key in runs[0].files:
        if key != "__l2l_tf__":
            np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)
    assert not np.array_equal(runs[0]["lstm_0/w_gates"], different["lstm_0/w_gates"])


def test_meta_training_with_a_mirrored_strategy_runs_and_resumes(tmp_path):
    args = QUICK + ["--problem=quadratic", "--num_steps=20", "--unroll_length=10",
                    "--strategy=mirrored", "--logical_cpus=2", f"--save_path={tmp_path / 'm'}"]
    first = script("train.py", *args, "--num_epochs=2")
    assert first.returncode == 0, first.stderr
    resumed = script("train.py", *args, "--num_epochs=4", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 2" in resumed.stdout and "Epoch 4" in resumed.stdout


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_meta_training_with_two_processes_keeps_the_nets_identical(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    save_path = tmp_path / "run"
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "experiments", "train.py"), *QUICK,
             "--problem=quadratic", "--num_steps=20", "--unroll_length=10", "--num_epochs=3",
             "--strategy=multi_worker", f"--save_path={save_path}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    chief, worker = np.load(save_path / "cw.npz"), np.load(save_path / "worker_1" / "cw.npz")
    for key in chief.files:
        if key != "__l2l_tf__":
            np.testing.assert_array_equal(chief[key], worker[key], err_msg=key)
    initial = l2l_tf.networks.CoordinateWiseDeepLSTM(layers=(20, 20)).initial_weights(seed=0)
    assert not np.allclose(chief["lstm_0/w_gates"], initial["lstm_0"]["w_gates"].numpy())


def test_reproduce_tunes_baselines_and_the_learned_rate_then_reuses_its_caches(tmp_path):
    shipped = tmp_path / "nets"
    shutil.copytree(os.path.join(ROOT, "l2l_tf", "pretrained", "quadratic"), shipped)
    learned_key = f"L2L | nets {l2l_tf.networks.nets_fingerprint(str(shipped))}"
    args = ["--problem=quadratic", f"--path={shipped}",
            "--num_runs=3", "--tuning_runs=2", "--grid=0.01,0.1", "--learned_grid=0.3,1",
            f"--output_dir={tmp_path}"]
    first = script("reproduce.py", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("  tune base ") == 4 * 2 + 2
    with open(tmp_path / "quadratic_tuning.json") as f:
        learned_scores = json.load(f)["base"][learned_key]
    assert sorted(learned_scores) == ["0.3", "1"] and len(set(learned_scores.values())) == 2
    chosen = min(learned_scores, key=learned_scores.get)
    with open(tmp_path / "quadratic_results.md") as f:
        table = f.read()
    assert "| base | L2L | " in table and f"| base | L2L (lr {chosen}) | " in table
    for name in ("SGD", "RMSprop", "Adam", "NAG"):
        assert f"| base | {name} (lr " in table and f"- base {name}: 0.01: " in table
    assert "- base L2L: 0.3: " in table and os.path.exists(tmp_path / "quadratic_base.png")
    curves = np.load(tmp_path / "quadratic_base_curves.npz")
    assert curves[learned_key].shape == (3, 101)
    # The factor 1 is the untuned optimizer itself; 0.3 scales every update.
    tuned_key = f"L2L (lr {chosen}) | nets {learned_key[-12:]}"
    assert np.array_equal(curves[learned_key], curves[tuned_key]) == (chosen == "1")
    # A second run reuses the tuning and the curves.
    second = script("reproduce.py", *args)
    assert second.returncode == 0, second.stderr
    assert "tune" not in second.stdout
    # Changed nets at the same path: their tuning and curves are new, the baselines' reused.
    net_file = next(shipped.glob("*.npz"))
    net_name, options, weights = l2l_tf.networks.load_weights(str(net_file))
    weights["linear"]["b"] = weights["linear"]["b"] + 0.5
    l2l_tf.networks.save_weights(str(net_file), l2l_tf.networks.factory(net_name, options),
                                 weights)
    third = script("reproduce.py", *args)
    assert third.returncode == 0, third.stderr
    assert third.stdout.count("  tune base ") == 2 and "  tune base L2L " in third.stdout
    curves = np.load(tmp_path / "quadratic_base_curves.npz")
    new_key = f"L2L | nets {l2l_tf.networks.nets_fingerprint(str(shipped))}"
    assert new_key != learned_key and not np.array_equal(curves[new_key], curves[learned_key])


def test_schedule_ceiling_table_starts_as_keras_adam_at_its_start_rate():
    """The table's 'start: Adam' column is the table before meta-training: Keras's Adam, with
    other directions added (--directions) or their weights free (--free_mix) too; the slow
    direction alone is Keras's Adam with beta_1 0.99, the sign alone a signed step of the rate,
    and a bounded weight, however large, adds its direction at most once to Adam's step.
    In its own process: the script's absl flags clash with keras_fit's, imported by others."""
    code = """
import keras, numpy as np, tensorflow as tf
import schedule_ceiling as ceiling
shapes = [(3, 2), (2,)]

def steps(table, weights, *adams):  # the table's steps against the sum of the adams' (none: sign)
    variables = [[keras.Variable(np.ones(shape, np.float32)) for shape in shapes]
                 for _ in adams]
    values = [np.ones(shape, np.float32) for shape in shapes]
    momenta = [np.zeros(shape, np.float32) for shape in shapes]
    states = [table.initial_state(shape) for shape in shapes]
    rng = np.random.default_rng(0)
    for _ in range(5):
        gradients = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
        for adam, its_variables in zip(adams, variables):
            adam.apply_gradients(zip(gradients, its_variables))
        for i, gradient in enumerate(gradients):
            update, states[i] = table.step(weights, tf.constant(gradient), states[i])
            values[i] = values[i] + update.numpy()
            momenta[i] = 0.9 * momenta[i] + 0.1 * gradient
            if not adams:  # the sign of Adam's momentum at the table's rate
                np.testing.assert_allclose(update.numpy(), -0.03 * np.sign(momenta[i]),
                                           rtol=1e-5)
    if adams:
        for i, value in enumerate(values):
            moved = sum(its_variables[i].numpy() - 1.0 for its_variables in variables)
            np.testing.assert_allclose(value, 1.0 + moved, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(values[0] - 1.0)) > 0.05  # it moved

for table in (ceiling.ScheduleTable(shapes, segments=4, start_rate=0.03),
              ceiling.ScheduleTable(shapes, segments=4, start_rate=0.03,
                                    directions=("gradient", "slow", "sign")),
              ceiling.ScheduleTable(shapes, segments=4, start_rate=0.03,
                                    directions=("slow",), free_mix=True)):
    steps(table, table.initial_weights(), keras.optimizers.Adam(0.03))
for name, adams in (("slow", [keras.optimizers.Adam(0.03, beta_1=0.99)]), ("sign", [])):
    table = ceiling.ScheduleTable(shapes, segments=4, start_rate=0.03, directions=(name,),
                                  free_mix=True)
    weights = table.initial_weights()
    weights["table"]["weights"] = tf.constant([[[0.0, 1.0]] * 4] * 2)  # Adam's step off
    steps(table, weights, *adams)
bounded = ceiling.ScheduleTable(shapes, segments=4, start_rate=0.03, directions=("slow",))
weights = bounded.initial_weights()
weights["table"]["weights"] = tf.fill([2, 4, 1], 100.0)  # tanh: at most 1
steps(bounded, weights, keras.optimizers.Adam(0.03), keras.optimizers.Adam(0.03, beta_1=0.99))
capped = ceiling.ScheduleTable(shapes, segments=4, start_rate=0.1, max_rate=0.03)
log_factor = capped.log_factor(capped.initial_weights()["table"]["log_factor"])
np.testing.assert_allclose(np.exp(log_factor) * 1e-3, 0.03, rtol=1e-6)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=os.path.join(ROOT, "experiments"))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("mix, weighed", [
    ([], ["gradient"]),  # the default's form: no flag in the command
    (["--directions=gradient,slow", "--free_mix"], ["adam", "gradient", "slow"]),
])
def test_schedule_ceiling_writes_its_table_and_resumes_from_its_cache(tmp_path, mnist_data_dir,
                                                                     mix, weighed):
    output = tmp_path / "ceiling.md"
    args = ["--configs=base", "--max_rates=0.03", "--meta_epochs=2", "--num_runs=2",
            f"--output={output}", *mix]
    first = script("schedule_ceiling.py", *args)
    assert first.returncode == 0, first.stderr
    cache = (tmp_path / "ceiling_runs.json").read_text()
    text = output.read_text()
    row = [line for line in text.splitlines() if line.startswith("| base | 0.03 |")]
    assert len(row) == 1
    assert (f"--meta_epochs=2 --meta_learning_rate=0.005 --samples=1 --num_runs=2 "
            f"{''.join(flag + ' ' for flag in mix)}--seed=0 --output={output}") in text
    assert f"Learned step sizes and {', '.join(weighed)} weights per tensor" in text
    rates = json.loads(cache)
    (result,) = rates.values()
    assert np.max(result["rates"]) <= 0.03 + 1e-6 and np.shape(result["rates"]) == (4, 10)
    assert all(np.shape(result[f"{name}_weights"]) == (4, 10) for name in weighed)
    if mix:  # the cache is read the same way for either form: checked once, for the suite's time
        return
    again = script("schedule_ceiling.py", *args)  # cached: no meta-training, same numbers
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout and output.read_text() == text
    assert (tmp_path / "ceiling_runs.json").read_text() == cache


@pytest.mark.parametrize("flags, message", [
    (["--configs=base,deep", "--output=c.md"], "unknown --configs ['deep']"),
    (["--max_rates=none,fast", "--output=c.md"], "--max_rates: 'fast' is neither none nor a rate"),
    (["--output=ceiling.txt"], "must end in .md"),
    (["--segments=0", "--output=c.md"], "--segments"),
    (["--directions=gradient,fast", "--output=c.md"], "give each of gradient, slow, sign"),
    (["--directions=slow,slow", "--output=c.md"], "at most once"),
    ([], "--output must have a value"),
])
def test_bad_schedule_ceiling_flags_give_one_line_and_exit_2(flags, message):
    result = script("schedule_ceiling.py", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
