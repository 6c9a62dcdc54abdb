"""Optimizees: the functions a learned optimizer is trained and evaluated on.

The original's problems were loss builders whose TF1 variables were intercepted and replaced by
tensors. Here a `Problem` says it outright: named parameter shapes with their initialisers,
constants re-sampled at every reset (a new quadratic each epoch), and a pure loss of parameter
tensors. All sampling uses the caller's `tf.random.Generator`, so runs are reproducible and the
generator's state can be checkpointed. Minibatches are drawn apart from the loss: the meta-step
then reads no data variables, so a replica's step compiles with XLA on any device.
"""

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Param:
    """One optimizee parameter: its name (matched by `net_assignments`), shape, initialiser."""

    name: str
    shape: tuple
    initializer: Callable  # (rng, shape) -> float32 tensor


@dataclasses.dataclass(frozen=True)
class Problem:
    """A differentiable loss of a list of parameter tensors.

    `constants` maps names to samplers `rng -> tensor`, called at every reset. `batch` (if
    any) draws one step's data `rng -> nested tensors` (a fresh minibatch each step).
    `loss(params, constants, batch)` returns a scalar, a pure function of tensors; `batch`
    is `()` for problems without data. `heldout(params)`, if any, returns `(loss,
    accuracy)` on the whole of a split the problem never draws its batches from.
    `validation_batch` (if any) draws a minibatch `rng -> nested tensors` of examples the
    training batches never contain, for `loss` in inference mode (no dropout): what a
    held-out meta-objective (`MetaOptimizer.meta_loss(meta_objective="validation")`) reads.
    """

    name: str
    params: tuple
    loss: Callable
    constants: dict = dataclasses.field(default_factory=dict)
    batch: Callable | None = None
    heldout: Callable | None = None
    validation_batch: Callable | None = None

    @property
    def param_names(self):
        return [p.name for p in self.params]

    def init_params(self, rng):
        return [p.initializer(rng, p.shape) for p in self.params]

    def sample_constants(self, rng):
        return {name: sampler(rng) for name, sampler in self.constants.items()}

    def sample_batch(self, rng):
        return () if self.batch is None else self.batch(rng)


@dataclasses.dataclass(frozen=True)
class Family:
    """Several problems meta-trained in turn: every reset moves to the next member.

    Unlike `ensemble` (one problem summing its members' losses, all stepped together), each
    epoch trains on one member, so members may differ in batch size or cost and each
    meta-step sees one member's loss on its own scale.
    """

    name: str
    members: tuple


def constant_initializer(value):
    return lambda rng, shape: tf.fill(shape, tf.constant(value, tf.float32))


def normal_initializer(stddev):
    return lambda rng, shape: rng.normal(shape, stddev=stddev, dtype=tf.float32)


def glorot_uniform_initializer(rng, shape):
    """Keras's default for `Dense` kernels: U(-l, l), l = sqrt(6 / (fan_in + fan_out)).

    Drawn from the problem's generator like every initialiser here (not with
    `keras.initializers.GlorotUniform`, which has its own seed), so runs stay reproducible.
    """
    limit = np.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(shape, -limit, limit, dtype=tf.float32)


def simple():
    """A scalar x, init 1, loss x^2: the original's test problem."""
    return Problem(
        name="simple",
        params=(Param("x", (), constant_initializer(1.0)),),
        loss=lambda params, constants, batch: tf.square(params[0]),
    )


def simple_multi_optimizer(num_dims=2):
    """Scalars x_0..x_{n-1}, init 1, loss sum x_i^2 (for several nets at once)."""
    return Problem(
        name="simple_multi_optimizer",
        params=tuple(Param(f"x_{i}", (), constant_initializer(1.0)) for i in range(num_dims)),
        loss=lambda params, constants, batch: tf.add_n([tf.square(x) for x in params]),
    )


def quadratic(batch_size=128, num_dims=10, stddev=0.01, distribution="uniform"):
    """Mean over a batch of ||W x - y||^2 with W, y re-sampled at every reset.

    `distribution="uniform"` draws W and y from U[0, 1) as the original code does;
    `"normal"` draws them from N(0, 1) as the paper describes.
    """
    if distribution not in ("uniform", "normal"):
        raise ValueError(f"distribution must be 'uniform' or 'normal', got {distribution!r}.")

    def sampler(shape):
        if distribution == "uniform":
            return lambda rng: rng.uniform(shape, dtype=tf.float32)
        return lambda rng: rng.normal(shape, dtype=tf.float32)

    def loss(params, constants, batch):
        product = tf.squeeze(tf.matmul(constants["w"], params[0][:, :, None]), -1)
        return tf.reduce_mean(tf.reduce_sum(tf.square(product - constants["y"]), 1))

    return Problem(
        name="quadratic",
        params=(Param("x", (batch_size, num_dims), normal_initializer(stddev)),),
        loss=loss,
        constants={
            "w": sampler((batch_size, num_dims, num_dims)),
            "y": sampler((batch_size, num_dims)),
        },
    )


def ensemble(problems, weights=None):
    """A weighted sum of several problems; their parameters are prefixed `problem_i/`."""
    weights = [1.0] * len(problems) if weights is None else list(weights)
    if len(weights) != len(problems):
        raise ValueError(f"ensemble got {len(problems)} problems but {len(weights)} weights.")
    params, slices, constants = [], [], {}
    for i, problem in enumerate(problems):
        start = len(params)
        params += [dataclasses.replace(p, name=f"problem_{i}/{p.name}") for p in problem.params]
        slices.append(slice(start, len(params)))
        constants.update({f"problem_{i}/{k}": v for k, v in problem.constants.items()})

    def loss(all_params, all_constants, batches):
        total = 0.0
        for i, (problem, weight, part) in enumerate(zip(problems, weights, slices)):
            prefix = f"problem_{i}/"
            own = {k[len(prefix):]: v for k, v in all_constants.items() if k.startswith(prefix)}
            total += weight * problem.loss(all_params[part], own, batches[i])
        return total

    def batch(rng):
        return tuple(problem.sample_batch(rng) for problem in problems)

    return Problem(name="ensemble", params=tuple(params), loss=loss, constants=constants,
                   batch=batch)


_ACTIVATIONS = {"sigmoid": tf.sigmoid, "relu": tf.nn.relu, "tanh": tf.tanh, "elu": tf.nn.elu,
                "gelu": tf.nn.gelu}


def _activation(name):
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}: use one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def _check_mode(mode):
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}.")


def load_tfds(name, mode, data_dir=None):
    """All images and labels of a TFDS split as NumPy arrays (uint8, int32), offline.

    Reads from `data_dir` or the `TFDS_DATA_DIR` environment variable and never downloads: a
    missing dataset is an error that says where it was looked for.
    """
    import tensorflow_datasets as tfds

    try:
        dataset = tfds.load(name, split=mode, as_supervised=True, data_dir=data_dir,
                            download=False)
        batches = list(tfds.as_numpy(dataset.batch(10000)))
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, OSError) as error:
        raise FileNotFoundError(
            f"TFDS dataset {name!r} ({mode}) is not prepared in "
            f"{data_dir or 'TFDS_DATA_DIR'}: set TFDS_DATA_DIR to a prepared data dir "
            f"({type(error).__name__}: {str(error).splitlines()[0]})."
        ) from None
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    return images, labels


def _batch_indices(rng, batch_size, labels):
    """`batch_size` example indices drawn with replacement, as in the original."""
    return rng.uniform([batch_size], 0, tf.shape(labels, out_type=tf.int64)[0], dtype=tf.int64)


def _batch_sampler(images, labels, batch_size):
    """`rng -> (images, labels)`: a fresh minibatch drawn with replacement, as in the original.

    The images stay uint8 (the losses scale them to [0, 1] with `_pixels`): an unroll draws
    all its batches up front, and 2000 steps of float32 batches would take 4x the memory.
    """

    def sample_batch(rng):
        indices = _batch_indices(rng, batch_size, labels)
        return tf.gather(images, indices), tf.gather(labels, indices)

    return sample_batch


def _pixels(images):
    """uint8 images as float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def _data_variables(images, labels):
    # Variables, not constants: a 47 MB constant would be copied into every traced graph.
    return (tf.Variable(images, trainable=False, name="images"),
            tf.Variable(labels, trainable=False, name="labels"))


def split_train_validation(images, labels, validation_size, train_size=None):
    """`((images, labels), (images, labels))` for training and validation from one split:
    validation is its last `validation_size` examples, training its first `train_size`
    (default all the others); the two never share an example."""
    end = len(labels) - validation_size
    train_end = end if train_size is None else train_size
    if not (0 <= validation_size < len(labels) and 0 < train_end <= end):
        raise ValueError(
            f"validation_size={validation_size!r} and train_size={train_size!r} do not fit "
            f"the {len(labels)} examples of the split: both must be positive (validation "
            "may be 0) and train_size + validation_size at most the split's size.")
    return (images[:train_end], labels[:train_end]), (images[end:], labels[end:])


MLP_INITIALIZERS = {
    # The original's: weights and biases N(0, 0.01^2).
    "normal": (normal_initializer(0.01), normal_initializer(0.01)),
    # Keras's `Dense` defaults, what a `model.fit` user's model starts from.
    "glorot": (glorot_uniform_initializer, constant_initializer(0.0)),
}


def _mlp_params(input_size, layers, num_classes, initializer):
    if initializer not in MLP_INITIALIZERS:
        raise ValueError(
            f"Unknown MLP initializer {initializer!r}: use one of {', '.join(MLP_INITIALIZERS)}."
        )
    weight_init, bias_init = MLP_INITIALIZERS[initializer]
    sizes = [input_size] + list(layers) + [num_classes]
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params += [
            Param(f"mlp/linear_{i}/w", (fan_in, fan_out), weight_init),
            Param(f"mlp/linear_{i}/b", (fan_out,), bias_init),
        ]
    return tuple(params)


def _mlp_logits(params, inputs, activation, dropout_masks=()):
    """The MLP's logits; `dropout_masks[i]`, if given, multiplies hidden layer i's output."""
    hidden = inputs
    num_layers = len(params) // 2
    for i in range(num_layers):
        hidden = tf.matmul(hidden, params[2 * i]) + params[2 * i + 1]
        if i < num_layers - 1:
            hidden = activation(hidden)
            if dropout_masks:
                hidden = hidden * dropout_masks[i]
    return hidden


def _dropout_masks(rng, batch_size, layers, rate):
    """Inverted dropout's masks, one `[batch_size, units]` per hidden layer (Keras's form:
    kept units are scaled by 1 / (1 - rate))."""
    return tuple(tf.cast(rng.uniform([batch_size, units]) >= rate, tf.float32) / (1.0 - rate)
                 for units in layers)


def _cross_entropy(logits, labels):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def _heldout_metrics(name, split, mode, data_dir, logits):
    """`params -> (loss, accuracy)` of `logits(params, images)` on all of `split`, which must
    not be `mode`, the split the batches come from."""
    if split is None:
        return None
    _check_mode(split)
    if split == mode:
        raise ValueError(f"heldout_split={split!r} is the split the batches come from: a "
                         "held-out split must be the other one.")
    images, labels = load_tfds(name, split, data_dir)
    images = tf.constant(images.astype(np.float32) / 255.0)
    labels = tf.constant(labels)

    def metrics(params):
        batch_logits = logits(params, images)
        correct = tf.equal(tf.argmax(batch_logits, axis=1, output_type=tf.int32), labels)
        return (_cross_entropy(batch_logits, labels),
                tf.reduce_mean(tf.cast(correct, tf.float32)))

    return metrics


def mnist(layers=(20,), activation="sigmoid", batch_size=128, mode="train", data_dir=None,
          initializer="normal", dropout=0.0, heldout_split=None, validation_size=0,
          train_size=None):
    """An MLP 784 -> layers -> 10 on MNIST, mean softmax cross-entropy, fresh batch per step.

    Weights and biases start from N(0, 0.01^2) as in the original (`initializer="normal"`),
    or as Keras's `Dense` layers do (`"glorot"`); pixels are scaled to [0, 1].
    `mode="train"` samples the train split (meta-training), `"test"` the test split.
    `dropout` > 0 drops hidden units at that rate, with fresh masks drawn with each batch.
    `heldout_split` (the other split) gives the problem a `heldout` evaluation on all of it.
    `validation_size` > 0 keeps the split's last that many images out of the training
    batches and gives the problem a `validation_batch` sampler over them; `train_size`, if
    given, trains on only the split's first that many images (a small data set, which a
    2000-step run overfits).
    """
    _check_mode(mode)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    act = _activation(activation)
    images, labels = load_tfds("mnist", mode, data_dir)
    train, validation = split_train_validation(images.reshape(len(images), -1), labels,
                                               validation_size, train_size)
    sample_images = _batch_sampler(*_data_variables(*train), batch_size)
    validation_batch = None
    if validation_size:
        validation_batch = _batch_sampler(*_data_variables(*validation), batch_size)

    def sample_batch(rng):
        batch = sample_images(rng)
        return batch + _dropout_masks(rng, batch_size, layers, dropout) if dropout else batch

    def loss(params, constants, batch):
        batch_images, batch_labels, *masks = batch
        return _cross_entropy(_mlp_logits(params, _pixels(batch_images), act, masks),
                              batch_labels)

    def logits(params, batch_images):
        return _mlp_logits(params, tf.reshape(batch_images, [-1, 784]), act)

    return Problem(name="mnist", params=_mlp_params(784, layers, 10, initializer), loss=loss,
                   batch=sample_batch,
                   heldout=_heldout_metrics("mnist", heldout_split, mode, data_dir, logits),
                   validation_batch=validation_batch)


def mnist_cnn(channels=(8, 16), batch_size=128, mode="train", data_dir=None):
    """A small CNN on MNIST as Keras builds it by default: per layer a 3x3 VALID conv with
    ReLU and a 2x2 max-pool, then a dense layer to 10 logits; kernels Glorot-uniform
    (fan in kh*kw*in, fan out kh*kw*out), biases zero. `experiments/keras_fit.py`'s "cnn"."""
    _check_mode(mode)
    images, labels = load_tfds("mnist", mode, data_dir)
    images, labels = _data_variables(images, labels)
    params, size, in_channels = [], 28, 1
    for i, out in enumerate(channels):
        params += [Param(f"conv_{i}/w", (3, 3, in_channels, out), _conv_glorot_initializer),
                   Param(f"conv_{i}/b", (out,), constant_initializer(0.0))]
        size, in_channels = (size - 2) // 2, out
    params += list(_mlp_params(size * size * in_channels, (), 10, "glorot"))

    def loss(params, constants, batch):
        x, y = batch
        x = _pixels(x)
        for i in range(len(channels)):
            x = tf.nn.relu(tf.nn.conv2d(x, params[2 * i], 1, "VALID") + params[2 * i + 1])
            x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        return _cross_entropy(tf.matmul(x, params[-2]) + params[-1], y)

    return Problem(name="mnist_cnn", params=tuple(params), loss=loss,
                   batch=_batch_sampler(images, labels, batch_size))


def _conv_glorot_initializer(rng, shape):
    receptive = shape[0] * shape[1]
    limit = np.sqrt(6.0 / (receptive * (shape[2] + shape[3])))
    return rng.uniform(shape, -limit, limit, dtype=tf.float32)


def _batch_norm(x, axes):
    """Batch norm with batch statistics and no learned scale or offset (the original's use)."""
    mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + 1e-3)


def cifar10(conv_channels=(16, 16, 16), linear_layers=(32,), batch_norm=True, batch_size=128,
            mode="train", data_dir=None):
    """The paper's CIFAR-10 net: per layer a 5x5 SAME conv, batch norm, ReLU and 2x2 max-pool,
    then an MLP with batch norm and ReLU, 10 outputs.

    Batch norm normalises with the batch's statistics (training mode, as in the original's
    meta-training) and its offset is the layer's bias. Conv kernels are named `conv_i/w` so
    `net_assignments` can give them to a `KernelDeepLSTM`.
    """
    _check_mode(mode)
    images, labels = load_tfds("cifar10", mode, data_dir)
    images, labels = _data_variables(images, labels)
    params = []
    channels = 3
    for i, out in enumerate(conv_channels):
        params += [Param(f"conv_{i}/w", (5, 5, channels, out), normal_initializer(0.01)),
                   Param(f"conv_{i}/b", (out,), normal_initializer(0.01))]
        channels = out
    flat = 32 // 2 ** len(conv_channels)
    params += list(_mlp_params(flat * flat * channels, linear_layers, 10, "normal"))
    num_conv = len(conv_channels)

    def loss(params, constants, batch):
        x, y = batch
        x = _pixels(x)
        for i in range(num_conv):
            x = tf.nn.conv2d(x, params[2 * i], strides=1, padding="SAME")
            x = (_batch_norm(x, [0, 1, 2]) if batch_norm else x) + params[2 * i + 1]
            x = tf.nn.max_pool2d(tf.nn.relu(x), 2, 2, padding="SAME")
        x = tf.reshape(x, [batch_size, -1])
        mlp = params[2 * num_conv:]
        for i in range(len(mlp) // 2):
            x = tf.matmul(x, mlp[2 * i])
            if i < len(mlp) // 2 - 1:
                x = tf.nn.relu((_batch_norm(x, [0]) if batch_norm else x) + mlp[2 * i + 1])
            else:
                x = x + mlp[2 * i + 1]
        return _cross_entropy(x, y)

    return Problem(name="cifar10", params=tuple(params), loss=loss,
                   batch=_batch_sampler(images, labels, batch_size))


def keras_model(model, x, y, loss, batch_size=128, initializer="model"):
    """Turns a built Keras model, in-memory data and a Keras loss into a problem.

    The model runs on given tensors through Keras 3's `stateless_call`, so its weights can be
    the meta-trainer's tensors. `initializer="model"` starts every epoch from the model's
    current weights; `"normal"` from N(0, 0.01^2) like the original problems. Parameters are
    named by the variables' paths, for `net_assignments`. Non-trainable variables (batch norm
    statistics) are held at their current values.
    """
    if not model.built:
        raise ValueError("keras_model needs a built model: call it once or build it first.")
    if initializer not in ("model", "normal"):
        raise ValueError(f"initializer must be 'model' or 'normal', got {initializer!r}.")
    loss_fn = tf.keras.losses.get(loss)
    data_x, data_y = (tf.Variable(np.asarray(a), trainable=False) for a in (x, y))
    frozen = [tf.constant(v.numpy()) for v in model.non_trainable_variables]

    def init_from(variable):
        if initializer == "normal":
            return normal_initializer(0.01)
        value = tf.constant(variable.numpy(), tf.float32)
        return lambda rng, shape: value

    params = tuple(
        Param(v.path, tuple(v.shape), init_from(v)) for v in model.trainable_variables
    )

    def sample_batch(rng):
        indices = _batch_indices(rng, batch_size, data_y)
        return tf.gather(data_x, indices), tf.gather(data_y, indices)

    def problem_loss(params, constants, batch):
        batch_x, batch_y = batch
        outputs, _ = model.stateless_call(list(params), frozen, batch_x, training=True)
        return tf.reduce_mean(loss_fn(batch_y, outputs))

    return Problem(name=f"keras_model:{model.name}", params=params, loss=problem_loss,
                   batch=sample_batch)
