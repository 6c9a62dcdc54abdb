"""Bad input to the public API: a clear one-line error naming the problem and the fix.

The CLI half of the table (exit code 2, one line, nothing written) is in test_cli.py.
"""

import re

import keras
import numpy as np
import pytest

import l2l_tf
from l2l_tf import meta, networks, presets, preprocess, problems


def saved_net(tmp_path, layers=(3,)):
    net = networks.CoordinateWiseDeepLSTM(layers=layers)
    path = str(tmp_path / "net.npz")
    networks.save_weights(path, net, net.initial_weights(seed=0))
    return path


def corrupt_file(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 broken")
    return str(path)


CASES = [
    ("unknown net", lambda t: networks.factory("Transformer"), "Unknown net 'Transformer'"),
    ("unknown preprocessing", lambda t: networks.CoordinateWiseDeepLSTM(preprocess_name="log"),
     "Unknown preprocess_name 'log'"),
    ("bad preprocess option", lambda t: preprocess.factory("LogAndSign", {"k": -1}), "k > 0"),
    ("unknown preset", lambda t: presets.default_nets("fast"), "Unknown preset 'fast'"),
    ("unknown problem", lambda t: presets.get_config("imagenet"), "Unknown problem 'imagenet'"),
    ("non-positive layer size", lambda t: networks.CoordinateWiseDeepLSTM(layers=(0,)),
     "positive integers"),
    ("initializer of the wrong shape",
     lambda t: networks.CoordinateWiseDeepLSTM(layers=(3,), initializer={"w": np.ones((2, 2))}),
     r"linear/w has shape \(2, 2\)"),
    ("missing weights file", lambda t: networks.load_weights(str(t / "none.npz")),
     "No net weights file"),
    ("corrupt weights file", lambda t: networks.load_weights(corrupt_file(t)), "corrupt"),
    ("weights of another architecture",
     lambda t: networks.factory("CoordinateWiseDeepLSTM", {"layers": (20, 20)},
                               net_path=saved_net(t)), "needs"),
    ("pretrained path missing", lambda t: l2l_tf.LearnedOptimizer.from_pretrained(str(t / "x")),
     "No net weights file"),
    ("nets not a dict", lambda t: l2l_tf.LearnedOptimizer(nets=["cw"]), "non-empty dict"),
    ("bad net name", lambda t: l2l_tf.LearnedOptimizer(nets={"a b": networks.Sgd()}),
     "letters, digits"),
    ("unknown spec key",
     lambda t: l2l_tf.LearnedOptimizer(nets={"a": {"net": "Sgd", "options": {}}}),
     "unknown keys"),
    ("assignment to an unknown net",
     lambda t: l2l_tf.LearnedOptimizer(nets={"a": networks.Sgd()}, net_assignments=[("b", ".*")]),
     "names net 'b'"),
    ("bad assignment regex",
     lambda t: l2l_tf.LearnedOptimizer(nets={"a": networks.Sgd()}, net_assignments=[("a", "(")]),
     "Bad pattern"),
    ("integer variable",
     lambda t: l2l_tf.LearnedOptimizer(nets={"a": networks.Sgd()}).build(
         [keras.Variable(np.zeros(3, np.int32), trainable=False, name="counts")]),
     "floating-point variables"),
    ("kernel net on a dense weight",
     lambda t: networks.KernelDeepLSTM(kernel_shape=(3, 3)).state_shapes((10, 4)),
     "only 4-D conv kernels"),
    ("standard net on the wrong shape",
     lambda t: networks.StandardDeepLSTM(output_size=3).state_shapes((4, 2)),
     "needs shape"),
    ("zero unroll length", lambda t: meta.MetaOptimizer().meta_loss(problems.simple(), 0),
     "positive integer"),
    ("loss weights of the wrong length",
     lambda t: meta.MetaOptimizer().meta_loss(problems.simple(), 2, loss_weights=[1.0]),
     "one per step"),
    ("unknown activation", lambda t: problems.mnist(activation="gelu3"), "Unknown activation"),
    ("unknown split", lambda t: problems.mnist(mode="valid"), "'train' or 'test'"),
    ("validation split larger than the data",
     lambda t: problems.mnist(validation_size=50000, train_size=20000), "do not fit"),
    ("unknown meta-objective",
     lambda t: meta.MetaOptimizer().meta_loss(problems.simple(), 2, meta_objective="test"),
     "'train' or 'validation'"),
    ("validation meta-objective without held-out examples",
     lambda t: meta.MetaOptimizer().meta_loss(problems.simple(), 2, meta_objective="validation"),
     "validation_size=10000"),
    ("vector_max_factor outside max_factor's bound",
     lambda t: networks.TensorwiseLSTM(max_factor=30.0, vector_max_factor=100.0),
     r"vector_max_factor .* \[1/30, 30\], got 100.0"),
    ("dead_unit_share outside (0, 1]",
     lambda t: networks.TensorwiseLSTM(dead_unit_share=1.5),
     r"dead_unit_share .* in \(0, 1\], or None \(off\), got 1.5"),
    ("unknown quadratic distribution", lambda t: problems.quadratic(distribution="cauchy"),
     "'uniform' or 'normal'"),
    ("ensemble weights of the wrong length",
     lambda t: problems.ensemble([problems.simple()], [1.0, 2.0]), "1 problems but 2 weights"),
]


@pytest.mark.parametrize("case, call, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(case, call, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        call(tmp_path)
    text = str(error.value)
    assert "\n" not in text
    assert len(text) < 400
    assert re.search(message, text), text
    # Nothing written: only the inputs a case prepares for itself are there.
    assert {p.name for p in tmp_path.iterdir()} <= {"net.npz", "corrupt.npz"}


def test_meta_training_under_a_strategy_refuses_misplaced_set_up():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with pytest.raises(ValueError, match="create the MetaOptimizer inside strategy.scope"):
        meta.MetaOptimizer(seed=0).meta_minimize(problems.simple(), 2, strategy=strategy)
    with strategy.scope():
        optimizer = meta.MetaOptimizer(seed=0)
        with pytest.raises(ValueError, match="outside strategy.scope"):
            optimizer.meta_minimize(problems.simple(), 2, strategy=strategy)
    run = optimizer.meta_minimize(problems.simple(), 2, strategy=strategy)
    meta_loss, losses = run.step()
    assert losses.shape == (3,) and np.isfinite(meta_loss.numpy())
