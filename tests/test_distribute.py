"""LearnedOptimizer under tf.distribute, on two logical CPU devices (no accelerator here)."""

import json
import os
import subprocess
import sys


def test_mirrored_fit_matches_one_device_and_backup_and_restore_resumes(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "scripts", "mirrored_fit.py")
    result = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout.strip().splitlines()[-1])
    # Same global batch: MirroredStrategy all-reduces the gradients, so the updates agree.
    assert r["variables"] < 1e-5 and r["states"] < 1e-5, r
    assert r["replica_gap"] == 0.0, r  # every replica holds the same LSTM states
    # A net pooling a reading over the variables' states (written by `apply` in each
    # replica's context) steps as on one device, and its brake did act.
    assert r["pooled_variables"] < 1e-5 and r["pooled_states"] < 1e-5, r
    assert r["pooled_replica_gap"] == 0.0 and r["pooled_brake"] < 1.0, r
    # A fit interrupted after epoch 2 and restarted with BackupAndRestore ends where an
    # uninterrupted fit ends: the optimizer's states came back from the backup.
    assert r["iterations"] == [12, 12], r
    assert r["restored_variables"] < 1e-5 and r["restored_states"] < 1e-5, r


def test_meta_training_with_two_replicas_equals_one_device_with_two_samples_with_and_without_xla():
    script = os.path.join(os.path.dirname(__file__), "scripts", "mirrored_meta.py")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["changed"] > 1e-4, r  # the meta-steps did move the nets
    for mode in ("graph", "xla"):  # each replica's unroll as a graph and compiled with XLA
        assert r[mode]["weights"] < 1e-5 and r[mode]["losses"] < 1e-4, r
        assert r[mode]["replica_gap"] == 0.0, r  # the nets stay identical on both replicas
