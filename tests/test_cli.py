"""The absl scripts as a user runs them: real processes, real files, exit codes."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import l2l_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--problem=simple", "--num_steps=10", "--unroll_length=5", "--log_period=2",
         "--evaluation_period=2", "--evaluation_epochs=2", "--checkpoint_period=2",
         "--learning_rate=0.01", "--noprogress"]


def script(name, *args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", name), *args],
                          capture_output=True, text=True, timeout=timeout)


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


def test_sigkill_at_random_moments_loses_at_most_one_checkpoint_interval(tmp_path):
    """Kill train.py at random moments, resume each time: no corrupt file, little lost, and
    the end result is bit-for-bit the uninterrupted run's (op determinism on)."""
    args = QUICK + ["--problem=quadratic", "--num_steps=20", "--unroll_length=10",
                    "--num_epochs=30", "--log_period=1", "--evaluation_period=3",
                    "--checkpoint_period=2", "--deterministic"]
    straight = script("train.py", *args, f"--save_path={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr

    path = tmp_path / "killed"
    delays = np.random.default_rng(0).uniform(0.0, 1.5, size=3)
    for attempt, delay in enumerate(delays):
        index = path / "checkpoint" / "checkpoint"
        command = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), *args,
                   f"--save_path={path}"] + (["--resume"] if index.exists() else [])
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
        last_epoch = 0
        for line in process.stdout:  # wait for training to be under way, then a random delay
            if line.startswith("Epoch "):
                last_epoch = int(line.split()[1])
                break
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        rest, _ = process.communicate()
        epochs = [int(l.split()[1]) for l in rest.splitlines() if l.startswith("Epoch ")]
        last_epoch = max([last_epoch] + epochs)
        checkpoint = 0
        if index.exists():
            checkpoint = int(index.read_text().splitlines()[0].split("ckpt-")[1].rstrip('"'))
        assert checkpoint >= last_epoch - 2, (checkpoint, last_epoch)
        if (path / "cw.npz").exists():  # the nets file is readable whenever it exists
            with np.load(path / "cw.npz") as saved:
                assert saved["lstm_0/w_gates"].shape == (21, 80)
        assert not [f for f in os.listdir(path) if f.startswith(".tmp")]

    resumed = script("train.py", *args, f"--save_path={path}", "--resume")
    assert resumed.returncode == 0, resumed.stderr
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
    (["--resume"], "--resume: no checkpoint in"),
    (["positional"], "unexpected arguments"),
    (["--init_path=/nonexistent"], "--init_path='/nonexistent' is not a directory"),
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
])
def test_bad_evaluate_flags_give_one_line_and_exit_2(flags, message):
    result = script("evaluate.py", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


def test_benchmark_prints_its_tables_and_refuses_unknown_sections():
    """Structure only: timings are the benchmark's output, never asserted."""
    result = script("benchmark.py", "--sections=fit,lstm", "--repeats=1", "--fit_steps=2")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| XLA", "| ---", "| False", "| True",
        "| part", "| ---", "| whole step", "| its two matmuls", "| one layer's elementwise part"]
    ratios = [float(row.split(" | ")[3]) for row in rows[2:4]]
    assert all(ratio > 0 for ratio in ratios)
    bad = script("benchmark.py", "--sections=fit,speed")
    assert bad.returncode == 2 and "unknown --sections ['speed']" in bad.stderr


def test_keras_fit_trains_every_model_with_every_optimizer_and_writes_its_tables(
        tmp_path, mnist_data_dir):
    output = tmp_path / "fit.md"
    result = script("keras_fit.py", "--models=mlp_sigmoid,cnn", "--epochs=2", "--seeds=0,1",
                    "--optimizers=adam@0.03,mnist-wide@0.3:cosine", "--train_examples=1280",
                    f"--output={output}")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in output.read_text().splitlines()
            if line.startswith(("| mlp", "| cnn"))]
    assert [(r[0], r[1]) for r in rows] == [
        ("| mlp_sigmoid", "adam 0.03"), ("| mlp_sigmoid", "mnist-wide 0.3, cosine"),
        ("| cnn", "adam 0.03"), ("| cnn", "mnist-wide 0.3, cosine")]
    for row in rows:  # 1280 examples are 10 steps an epoch: both learn, from ln 10 = 2.30
        first, second = float(row[2]), float(row[3])
        assert second < first < 2.3 and 0.3 < float(row[5].rstrip(" |")) <= 1
    with open(tmp_path / "fit.csv", newline="") as f:
        header, *records = list(csv.reader(f))
    assert header == ["model", "optimizer", "seed", "epoch", "test_loss", "test_accuracy"]
    assert len(records) == 2 * 2 * 2 * 2  # models x optimizers x seeds x epochs
    last = {(r[0], r[1]): [] for r in records}
    for r in records:
        if r[3] == "2":
            last[(r[0], r[1])].append(float(r[4]))
    for row in rows:  # the table's last-epoch loss is the mean over seeds of the csv's
        want = np.mean(last[(row[0].lstrip("| "), row[1])])
        assert abs(float(row[4].split(" ± ")[0]) - want) < 6e-4


@pytest.mark.parametrize("flags, message", [
    (["--models=resnet"], "unknown --models ['resnet']"),
    (["--optimizers=adam"], "is not name@learning_rate[:cosine]"),
    (["--optimizers=adam@0.1:linear"], "is not name@learning_rate[:cosine]"),
    (["--optimizers=nope@1"], "No shipped optimizer named 'nope'"),
    (["--output=fit.txt"], "must end in .md"),
])
def test_bad_keras_fit_flags_give_one_line_and_exit_2(flags, message):
    result = script("keras_fit.py", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


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
    shipped = os.path.join(ROOT, "l2l_tf", "pretrained", "quadratic")
    args = ["--problem=quadratic", f"--path={shipped}",
            "--num_runs=3", "--tuning_runs=2", "--grid=0.01,0.1", "--learned_grid=0.3,1",
            f"--output_dir={tmp_path}"]
    first = script("reproduce.py", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("  tune base ") == 4 * 2 + 2
    with open(tmp_path / "quadratic_tuning.json") as f:
        learned_scores = json.load(f)["base"]["L2L"]
    assert sorted(learned_scores) == ["0.3", "1"] and len(set(learned_scores.values())) == 2
    chosen = min(learned_scores, key=learned_scores.get)
    with open(tmp_path / "quadratic_results.md") as f:
        table = f.read()
    assert "| base | L2L | " in table and f"| base | L2L (lr {chosen}) | " in table
    for name in ("SGD", "RMSprop", "Adam", "NAG"):
        assert f"| base | {name} (lr " in table and f"- base {name}: 0.01: " in table
    assert "- base L2L: 0.3: " in table and os.path.exists(tmp_path / "quadratic_base.png")
    curves = np.load(tmp_path / "quadratic_base_curves.npz")
    assert curves["L2L"].shape == (3, 101)
    # The factor 1 is the untuned optimizer itself; 0.3 scales every update.
    assert np.array_equal(curves["L2L"], curves[f"L2L (lr {chosen})"]) == (chosen == "1")
    # A second run reuses the tuning and the curves.
    second = script("reproduce.py", *args)
    assert second.returncode == 0, second.stderr
    assert "tune" not in second.stdout
