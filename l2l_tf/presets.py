"""Named configurations: constants of the paper vs the original code, and per-problem set-ups.

The paper and the original code disagree on the preprocessing k and the output scale (and on
how the quadratic's W and y are drawn); both are shipped under names so that a run says which
one it used. `get_config` is the original's `util.get_config`.
"""

import os

from l2l_tf import networks, problems

PRESETS = {
    # The original code: networks' LogAndSign k = 5, output scale 0.01, uniform quadratics.
    "original": {"k": 5, "scale": 0.01, "quadratic_distribution": "uniform"},
    # The paper: p = 10, output scale 0.1 (Appendix A), Gaussian quadratics (sec. 3.1).
    "paper": {"k": 10, "scale": 0.1, "quadratic_distribution": "normal"},
    # Beyond the paper: its constants with k = 20, so that LogAndSign keeps the sign of
    # gradients down to e^-20 (~2e-9) instead of e^-10 (~4.5e-5). A 2-hidden-layer sigmoid
    # MLP's first-layer gradients at initialisation are all below e^-10 (BUILD_NOTES.md).
    "wide": {"k": 20, "scale": 0.1, "quadratic_distribution": "normal"},
}

DEFAULT_NET_NAME = "coordinatewise"

# Meta-trained optimizers shipped with the package: one directory of nets per name, with a
# PROVENANCE.md giving the command, seed and epochs that made it.
PRETRAINED_DIR = os.path.join(os.path.dirname(__file__), "pretrained")
DEFAULT_PRETRAINED = "mnist-keras"  # what LearnedOptimizer() uses


def pretrained_names():
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return sorted(n for n in os.listdir(PRETRAINED_DIR)
                  if os.path.isdir(os.path.join(PRETRAINED_DIR, n)))


def pretrained_path(name_or_path):
    """The directory of a shipped optimizer, or `name_or_path` itself if it is a path."""
    if name_or_path in pretrained_names():
        return os.path.join(PRETRAINED_DIR, name_or_path)
    if os.path.exists(name_or_path) or os.sep in name_or_path or name_or_path.endswith(".npz"):
        return name_or_path
    raise FileNotFoundError(
        f"No shipped optimizer named {name_or_path!r} and no such path: use one of "
        f"{pretrained_names()} or the path of saved nets."
    )

# The paper's hand-designed baselines, as nets so that they run through the same unroll as the
# learned optimizer (same problems, batches and resets for a given seed).
BASELINES = {"SGD": "Sgd", "RMSprop": "RMSprop", "Adam": "Adam", "NAG": "Nag"}


def baseline_nets(name, learning_rate):
    """`{"baseline": spec}` for `MetaOptimizer(**...)`: a baseline of `BASELINES` at a rate."""
    return {"baseline": {"net": BASELINES[name], "net_options": {"learning_rate": learning_rate}}}


PROBLEMS = ("simple", "simple-multi", "quadratic", "mnist", "mnist-mix", "mnist-family",
            "mnist-inits", "mnist-keras", "mnist-keras-overfit", "mnist-keras-deep", "cifar",
            "cifar-multi")


def _check_preset(preset):
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}: use one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def coordinatewise_net_options(preset="original", layers=(20, 20)):
    """Options of the default coordinatewise LSTM (2 x 20 units, LogAndSign) for a preset."""
    constants = _check_preset(preset)
    return {
        "layers": tuple(layers),
        "preprocess_name": "LogAndSign",
        "preprocess_options": {"k": constants["k"]},
        "scale": constants["scale"],
    }


def default_nets(preset="original"):
    """The original MetaOptimizer's default: one coordinatewise LSTM for every variable."""
    return {
        DEFAULT_NET_NAME: networks.CoordinateWiseDeepLSTM(**coordinatewise_net_options(preset))
    }


def _net_spec(net_name, path, net_options, net="CoordinateWiseDeepLSTM"):
    """The spec of a net to train, or with `path` the saved net itself (its own options)."""
    if path is not None:
        return networks.load_net(os.path.join(path, f"{net_name}.npz"))
    return {"net": net, "net_options": net_options}


# Beyond the paper: one optimizer for several MNIST MLPs at once, each with its own parameters
# and batches. "mnist-mix": sigmoid and ReLU, to see whether it keeps sigmoid's gains without
# failing on ReLU; "mnist-family": the mix plus the 2-hidden-layer sigmoid MLP, on which the
# sigmoid-trained optimizer does not generalise (BUILD_NOTES.md). "mnist-inits": the sigmoid
# MLP from the original's N(0, 0.01^2) and from Keras's Glorot initialisation, for optimizers
# meant for long `model.fit` runs of Keras models (BUILD_NOTES.md, "Longer training").
_MNIST_ENSEMBLES = {
    "mnist-inits": [{"initializer": "normal"}, {"initializer": "glorot"}],
    "mnist-mix": [{"activation": "sigmoid"}, {"activation": "relu"}],
    "mnist-family": [{"activation": "sigmoid"}, {"activation": "relu"},
                     {"layers": (20, 20), "activation": "sigmoid"}],
}


# Beyond the paper: MNIST models as a Keras user builds them (Keras's default
# initialisations, several widths, depths, activations, batch sizes, dropout), and the
# paper's MLP from its N(0, 0.01^2) start with sigmoid and ReLU, meta-trained in turn
# (`problems.Family`) for the `TensorwiseLSTM` net. No convolutional net: its activations
# over a 2000-step unroll do not fit in memory here. `experiments/keras_fit.py`'s models
# other than the paper's MLPs (the CNNs, the deeper MLP with dropout, the quickstart MLP) are
# deliberately not among them.
MNIST_KERAS_MEMBERS = (
    ("mnist", {"layers": (20,), "activation": "sigmoid"}),
    ("mnist", {"layers": (32,), "activation": "relu"}),
    ("mnist", {"layers": (64, 32), "activation": "gelu", "batch_size": 64, "dropout": 0.1}),
    ("mnist", {"layers": (48, 48), "activation": "tanh", "batch_size": 256}),
    ("mnist", {"layers": (100,), "activation": "relu", "batch_size": 32, "dropout": 0.3}),
    ("mnist", {"layers": (24, 24, 24), "activation": "relu"}),
    ("mnist", {"layers": (200,), "activation": "tanh", "batch_size": 96}),
    ("mnist", {"layers": (20,), "activation": "sigmoid", "initializer": "normal"}),
    ("mnist", {"layers": (20,), "activation": "relu", "initializer": "normal"}),
)
# "mnist-keras-overfit": the same but the 200-wide MLP (memory: a validation objective draws a
# second batch stream), plus MLPs trained on a few thousand images, which a 2000-step run
# overfits: with `meta_objective="validation"` an optimizer that trains them fast but
# generalises worse scores worse (BUILD_NOTES.md, session 7).
MNIST_KERAS_OVERFIT_MEMBERS = tuple(
    member for member in MNIST_KERAS_MEMBERS if member[1]["layers"] != (200,)) + (
    ("mnist", {"layers": (64, 32), "activation": "relu", "dropout": 0.2, "train_size": 4000}),
    ("mnist", {"layers": (64,), "activation": "relu", "batch_size": 64, "train_size": 2000}),
)
# "mnist-keras-deep": the same plus a 6 x 64 ReLU MLP, seventh in turn. Meta-trained tensor
# by tensor, on the nine MLPs alone the net learned to step every kernel at ~20x Adam's rate,
# which kills a 6 x 256 ReLU MLP and stalls a transformer (BUILD_NOTES.md, session 12). A
# 6 x 128 member does not fit in memory here over a 2000-step unroll.
MNIST_KERAS_DEEP_MEMBERS = (MNIST_KERAS_MEMBERS[:6]
                            + (("mnist", {"layers": (64,) * 6, "activation": "relu"}),)
                            + MNIST_KERAS_MEMBERS[6:])
MNIST_KERAS_FAMILIES = {"mnist-keras": MNIST_KERAS_MEMBERS,
                        "mnist-keras-overfit": MNIST_KERAS_OVERFIT_MEMBERS,
                        "mnist-keras-deep": MNIST_KERAS_DEEP_MEMBERS}
TENSORWISE_NET_NAME = "tensorwise"
# Held-out examples of a validation meta-objective: the train split's last 10,000 images
# (the validation split of `experiments/keras_fit.py` too; the test split stays unseen).
VALIDATION_SIZE = 10000


def mnist_keras_family(mode="train", data_dir=None, validation_size=0, name="mnist-keras"):
    """A family of `MNIST_KERAS_FAMILIES`, by default with Keras's initialisation;
    `validation_size` as in `problems.mnist`."""
    members = [getattr(problems, factory)(mode=mode, data_dir=data_dir,
                                          validation_size=validation_size,
                                          **{"initializer": "glorot", **options})
               for factory, options in MNIST_KERAS_FAMILIES[name]]
    return problems.Family(name, tuple(members))


def get_config(problem_name, path=None, preset="original", mode=None, data_dir=None,
               heldout_split=None, validation_size=0):
    """`(problem, net_config, net_assignments)` for a named problem, as the original's util.

    With `path` (a directory of saved nets) the nets' weights are loaded from it. MNIST and
    CIFAR use `mode`'s split; by default "test" with a `path` (evaluating a saved optimizer,
    as the original did) and "train" without. `heldout_split` gives the "mnist" problem its
    held-out evaluation on all of that split (`problems.Problem.heldout`); `validation_size`
    gives the MNIST MLPs a validation split (`problems.mnist`), as a validation
    meta-objective needs.
    """
    constants = _check_preset(preset)
    mode = mode or ("train" if path is None else "test")
    if heldout_split is not None and problem_name != "mnist":
        raise ValueError(f"Held-out evaluation is available for the mnist problem, not "
                         f"{problem_name!r}.")
    if validation_size and problem_name != "mnist" and problem_name not in MNIST_KERAS_FAMILIES:
        raise ValueError(f"A validation split is available for the mnist, "
                         f"{', '.join(MNIST_KERAS_FAMILIES)} problems, not {problem_name!r}.")
    linear_zero = {"layers": (), "initializer": "zeros"}
    default = coordinatewise_net_options(preset)
    if problem_name == "simple":
        return problems.simple(), {"cw": _net_spec("cw", path, linear_zero)}, None
    if problem_name == "simple-multi":
        net_config = {
            "cw": _net_spec("cw", path, linear_zero),
            "adam": {"net": "Adam", "net_options": {"learning_rate": 0.1}},
        }
        return problems.simple_multi_optimizer(), net_config, [("cw", ["x_0"]), ("adam", ["x_1"])]
    if problem_name == "quadratic":
        problem = problems.quadratic(distribution=constants["quadratic_distribution"])
        return problem, {"cw": _net_spec("cw", path, {"layers": (20, 20)})}, None
    if problem_name == "mnist":
        problem = problems.mnist(layers=(20,), mode=mode, data_dir=data_dir,
                                 heldout_split=heldout_split, validation_size=validation_size)
        return problem, {"cw": _net_spec("cw", path, default)}, None
    if problem_name in _MNIST_ENSEMBLES:
        problem = problems.ensemble([problems.mnist(mode=mode, data_dir=data_dir, **member)
                                     for member in _MNIST_ENSEMBLES[problem_name]])
        return problem, {"cw": _net_spec("cw", path, default)}, None
    if problem_name in MNIST_KERAS_FAMILIES:
        # The runs are 2000 steps long: beyond, the nominal step decays (TensorwiseLSTM).
        net = _net_spec(TENSORWISE_NET_NAME, path, {"decay_steps": 2000}, net="TensorwiseLSTM")
        family = mnist_keras_family(mode, data_dir, validation_size, problem_name)
        return family, {TENSORWISE_NET_NAME: net}, None
    if problem_name == "cifar":
        problem = problems.cifar10(mode=mode, data_dir=data_dir)
        return problem, {"cw": _net_spec("cw", path, default)}, None
    if problem_name == "cifar-multi":
        problem = problems.cifar10(mode=mode, data_dir=data_dir)
        net_config = {"conv": _net_spec("conv", path, default), "fc": _net_spec("fc", path, default)}
        return problem, net_config, [("conv", [r"^conv_\d+/w$"]), ("fc", [".*"])]
    raise ValueError(f"Unknown problem {problem_name!r}: use one of {list(PROBLEMS)}.")
