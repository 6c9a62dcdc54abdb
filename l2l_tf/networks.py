"""The optimizer nets of the paper and the original code, as pure functions of their weights.

A net is a description (layer sizes, preprocessing, scale, initializers); it owns no variables.
Whoever trains or uses it keeps the weights: `LearnedOptimizer` in Keras variables, the
meta-trainer in `tf.Variable`s it differentiates. Both call the same two functions, so they
cannot compute different updates:

- `initial_state(param_shape)`: the zero state for one optimizee parameter;
- `step(weights, gradient, state) -> (update, new_state)`: one optimizer step, differentiable
  with respect to `weights`. The update is *added* to the parameter (the sign is learned).

Weights are nested dicts `{module: {field: tensor}}` with the original's names (`lstm_0`,
`lstm_1`, ..., `linear`; fields `w_gates`, `b_gates`, `w`, `b`), the same structure the
original's `initializer` option and saved files use.

Every state is a tuple of float32 tensors whose first axis is the parameter's "rows" (its
coordinates, or its filters for `KernelDeepLSTM`). Nets whose rows are single coordinates
declare `elementwise = True`: they give the same result whether a parameter is stepped alone
or concatenated with others into one flat vector, which the meta-trainer uses for speed.
Others (the default) are stepped one parameter at a time.

A sparse gradient (`tf.IndexedSlices`, an `Embedding`'s) reaches a net dense, through
`dense_gradient`, which both drivers call. A net with `lazy_rows = True` also gets `held`, the
rows the gradient holds, and leaves the others where they are, as TF1's `LazyAdam` did.
"""

import hashlib
import json
import math
import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from l2l_tf import preprocess

TEMPORARY_PREFIX = ".tmp-"  # of files written beside their destination, then renamed
FORMAT_NAME = "l2l_tf.net"
FORMAT_VERSION = 1
_METADATA_KEY = "__l2l_tf__"


def dense_gradient(net, gradient, shape):
    """`(gradient, held)`: `gradient` as a dense tensor, and None or, for a sparse gradient
    (`tf.IndexedSlices`) and a net with `lazy_rows`, the mask to pass to its `step` as
    `held`: 1.0 on the rows (first axis) the gradient holds and 0.0 on the others, shaped to
    broadcast against the parameter (`[rows, 1, ...]`). A batch holds a few of an
    `Embedding`'s rows; the rest get a zero gradient once it is dense, and Adam's momentum
    would still move them for tens of steps after each batch that held them (BUILD_NOTES.md,
    "Sessions 67-68")."""
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient, None
    dense = tf.convert_to_tensor(gradient)
    if not net.lazy_rows:
        return dense, None
    rows = shape[0]
    counts = tf.math.unsorted_segment_sum(tf.ones_like(gradient.indices, tf.float32),
                                          gradient.indices, rows)
    return dense, tf.reshape(tf.minimum(counts, 1.0), [rows] + [1] * (len(shape) - 1))


def call_step(net, weights, gradient, state, pooled=None, held=None):
    """`net.step(weights, gradient, state)`, with `pooled` and `held` passed on only when
    set: a net of one's own, which reads neither, keeps the three-argument `step` (`Net.step`).
    Both drivers step every net through this."""
    return net.step(weights, gradient, state, *(() if pooled is None else (pooled,)),
                    **({} if held is None else {"held": held}))


class Net:
    """Base class: a stateful update rule with (possibly no) learnable weights."""

    elementwise = False  # True only where flat and per-parameter steps agree (module doc)
    lazy_rows = False  # True: `step` takes `held` (`dense_gradient`) and moves those rows only

    def weight_shapes(self):
        """`{module: {field: shape}}` of the learnable weights (empty for fixed rules)."""
        return {}

    def initial_weights(self, seed=None):
        """The weights from the net's initializers, as float32 tensors."""
        return {}

    def state_shapes(self, param_shape):
        """Shapes of the state tensors for a parameter of `param_shape`."""
        return ()

    def initial_state(self, param_shape):
        """The zero state for a parameter of `param_shape`."""
        return tuple(tf.zeros(shape, tf.float32) for shape in self.state_shapes(param_shape))

    def step(self, weights, gradient, state):
        """Returns `(update, new_state)` for `gradient` (float32, the parameter's shape).
        A net with a `pooled_shape` takes a fourth argument, `pooled`: its `pooled` reading
        of the states of every tensor it steps, as they were before this step. A net with
        `lazy_rows` takes `held` for a sparse gradient (`dense_gradient`). The drivers call it
        through `call_step`, which passes each of these only when it is set."""
        raise NotImplementedError

    def pooled_shape(self):
        """The shape of a reading the net pools over the states of every tensor it steps
        together (a Keras model's variables, a meta-training problem's parameters), or None
        for a net that reads each tensor alone. `pooled(states)` makes it."""
        return None

    def pooled(self, states):
        """The pooled reading (`pooled_shape`) of `states`, the states of every tensor the net
        steps, before a step; only for nets with a `pooled_shape`."""
        raise NotImplementedError

    def restarted(self, state, pooled=None):
        """`state` as the net's restart rule leaves it after a step (`TensorwiseLSTM`'s
        `restart_ratio`), `pooled` the reading the step took: as it is, for nets without
        one."""
        return state

    def without_restart(self):
        """This net without its restart rule: its `step` followed by `restarted` is this
        net's `step`. `LearnedOptimizer` compiles the first with XLA and runs the second
        after it: in the same XLA program the restart's selects change how XLA fuses and
        rounds the rest of the step, and runs drifted from the net without it from the
        third step on, though no restart fired (BUILD_NOTES.md, "Session 40")."""
        return self

    def decay_rate(self, state):
        """The step size that scales a decoupled weight decay (AdamW's learning rate) at the
        step after `state`, or None for a net without a nominal step size (the paper's LSTMs,
        whose steps are learned outright): `LearnedOptimizer(weight_decay=...)` shrinks
        variables by it as `keras.optimizers.AdamW` does by its rate."""
        return None

    def decayed(self, state, pull):
        """`state` after a decoupled weight decay moved the variable by `pull` (in the units
        of this net's update, before `learning_rate`): unchanged for a net whose state does
        not follow the variable's travel."""
        return state

    def get_config(self):
        """The constructor arguments, JSON-serialisable, without `initializer`."""
        raise NotImplementedError

    def scaled(self, factor):
        """The same net (same weights) with its update multiplied by `factor`: what
        `LearnedOptimizer(learning_rate=factor)` does, for the meta-trainer."""
        config = self.get_config()
        key = "scale" if "scale" in config else "learning_rate"
        config[key] *= factor
        if isinstance(self, LSTMNet):
            config["initializer"] = self.initializer
        return type(self)(**config)


def num_elements(shape):
    return int(np.prod(shape, dtype=np.int64))


def _coordinate_slots(param_shape, count):
    """State shapes of a fixed rule with `count` scalars per coordinate, e.g. Adam's t, m, v."""
    return ((num_elements(param_shape), 1),) * count


class LSTMNet(Net):
    """Base of the learned nets: LSTM layers `lstm_0, lstm_1, ...` and a `linear` output.

    Holds what they share: the layer sizes and the original's `initializer` option (a file's
    weights, arrays, Keras initializer names, per module or per field; `_initializer_for`).
    """

    def __init__(self, layers, initializer):
        self.layers = tuple(int(units) for units in layers)
        if any(units < 1 for units in self.layers):
            raise ValueError(f"Layer sizes must be positive integers, got layers={layers!r}.")
        self.initializer = initializer

    def default_weight(self, module, field, shape, seed, index):
        """A weight without an initializer: Sonnet's defaults (`_default_initializer`)."""
        return _default_initializer(field, shape, seed, index)

    def _check_initializer(self):
        """Fails early, naming the field, if an array initializer has the wrong shape."""
        for module, fields in self.weight_shapes().items():
            for field, shape in fields.items():
                value = _initializer_for(self.initializer, module, field)
                if value is None or isinstance(value, str) or callable(value):
                    continue
                array = np.asarray(value, dtype=np.float32)
                if array.shape != tuple(shape) and array.size != 1:
                    raise ValueError(
                        f"Initializer for {module}/{field} has shape {array.shape}, but "
                        f"{type(self).__name__}(layers={self.layers}) needs {tuple(shape)}: "
                        "build the net with the options the weights were trained with."
                    )

    def initial_weights(self, seed=None):
        weights = {}
        index = 0
        for module, fields in self.weight_shapes().items():
            weights[module] = {}
            for field, shape in fields.items():
                value = _initializer_for(self.initializer, module, field)
                if value is None:
                    value = self.default_weight(module, field, shape, seed, index)
                elif isinstance(value, str) or callable(value):
                    value = keras.initializers.get(value)(shape, dtype="float32")
                else:
                    value = np.broadcast_to(np.asarray(value, np.float32), shape)
                weights[module][field] = tf.convert_to_tensor(value, tf.float32)
                index += 1
        return weights


class StandardDeepLSTM(LSTMNet):
    """A stack of LSTMs and a linear output layer, times `scale` (the original's base class).

    Input `[rows, d]` is preprocessed elementwise into `[rows, d * features]`. LSTM gates are
    ordered (input, cell, forget, output) as in Sonnet, with forget-gate bias +1 added in the
    computation; gate weights are one matrix over the concatenated [input, hidden].
    """

    def __init__(
        self,
        output_size,
        layers=(20, 20),
        preprocess_name="identity",
        preprocess_options=None,
        scale=1.0,
        initializer=None,
    ):
        super().__init__(layers, initializer)
        self.output_size = int(output_size)
        if self.output_size < 1:
            raise ValueError(f"output_size must be a positive integer, got {output_size!r}.")
        self.preprocess_name = preprocess_name
        self.preprocess_options = dict(preprocess_options or {})
        self.preprocess = preprocess.factory(preprocess_name, preprocess_options)
        self.scale = float(scale)
        self._check_initializer()

    def _input_size(self):
        return self.output_size * preprocess.output_features(self.preprocess)

    def weight_shapes(self):
        shapes = {}
        fan_in = self._input_size()
        for i, units in enumerate(self.layers):
            shapes[f"lstm_{i}"] = {
                "w_gates": (fan_in + units, 4 * units),
                "b_gates": (4 * units,),
            }
            fan_in = units
        shapes["linear"] = {"w": (fan_in, self.output_size), "b": (self.output_size,)}
        return shapes

    def rows(self, param_shape):
        """How many independent rows (each with its own LSTM state) a parameter has.

        The standard net updates `[rows, output_size]` parameters, one LSTM row per row.
        """
        if len(param_shape) != 2 or param_shape[1] != self.output_size:
            raise ValueError(
                f"StandardDeepLSTM with output_size {self.output_size} cannot update a "
                f"parameter of shape {tuple(param_shape)}: it needs shape (rows, "
                f"{self.output_size}); use CoordinateWiseDeepLSTM for any shape."
            )
        return int(param_shape[0])

    def state_shapes(self, param_shape):
        rows = self.rows(param_shape)
        return tuple((rows, units) for units in self.layers for _ in ("h", "c"))

    def core(self, weights, inputs, state):
        """The LSTM stack on `inputs [rows, d]`: `([rows, output_size], new_state)`."""
        features = self.preprocess(tf.expand_dims(inputs, -1))
        hidden, new_state = deep_lstm(weights, tf.reshape(features, [tf.shape(features)[0], -1]),
                                      state, self.layers)
        output = tf.matmul(hidden, weights["linear"]["w"]) + weights["linear"]["b"]
        return output * self.scale, new_state

    def step(self, weights, gradient, state):
        self.rows(gradient.shape)
        return self.core(weights, gradient, state)

    def get_config(self):
        return {
            "output_size": self.output_size,
            "layers": list(self.layers),
            "preprocess_name": self.preprocess_name,
            "preprocess_options": self.preprocess_options,
            "scale": self.scale,
        }


class CoordinateWiseDeepLSTM(StandardDeepLSTM):
    """The paper's coordinatewise LSTM: one small net shared by every coordinate (sec. 2.1)."""

    elementwise = True

    def __init__(self, layers=(20, 20), **kwargs):
        super().__init__(output_size=1, layers=layers, **kwargs)

    def rows(self, param_shape):
        return num_elements(param_shape)

    def step(self, weights, gradient, state):
        output, new_state = self.core(weights, tf.reshape(gradient, [-1, 1]), state)
        return tf.reshape(output, tf.shape(gradient)), new_state

    def get_config(self):
        config = super().get_config()
        del config["output_size"]
        return config


class KernelDeepLSTM(StandardDeepLSTM):
    """One LSTM row per conv filter: a kernel `[kh, kw, in, out]` is `in * out` rows of `kh * kw`."""

    def __init__(self, kernel_shape, layers=(20, 20), **kwargs):
        self.kernel_shape = tuple(int(size) for size in kernel_shape)
        if len(self.kernel_shape) != 2:
            raise ValueError(
                f"kernel_shape must be (height, width), got {kernel_shape!r}."
            )
        super().__init__(output_size=num_elements(self.kernel_shape), layers=layers, **kwargs)

    def _check_param_shape(self, param_shape):
        if tuple(param_shape[:2]) != self.kernel_shape or len(param_shape) != 4:
            raise ValueError(
                f"KernelDeepLSTM with kernel_shape {self.kernel_shape} cannot update a "
                f"parameter of shape {tuple(param_shape)}: assign it only 4-D conv kernels "
                f"of shape {self.kernel_shape + ('in', 'out')}."
            )

    def rows(self, param_shape):
        self._check_param_shape(param_shape)
        return num_elements(param_shape[2:])

    def step(self, weights, gradient, state):
        self._check_param_shape(gradient.shape)
        rows = tf.reshape(tf.transpose(gradient, [2, 3, 0, 1]), [-1, self.output_size])
        output, new_state = self.core(weights, rows, state)
        return tf.reshape(tf.transpose(output, [1, 0]), tf.shape(gradient)), new_state

    def get_config(self):
        config = super().get_config()
        del config["output_size"]
        config["kernel_shape"] = list(self.kernel_shape)
        return config


class TensorwiseLSTM(LSTMNet):
    """Keras's Adam, with each tensor's step size set every step by a small LSTM.

    Beyond the paper, for long training runs of any model (BUILD_NOTES.md, "A default for
    real training"). The paper's net runs a 2 x 20 LSTM on every coordinate: ~10 kFLOP and
    80 floats of state per parameter per step, 15x Adam's step on a 100k-parameter MLP.
    Here the per-coordinate work and state are Adam's (moments m, v), and one LSTM per
    tensor (a variable) reads `FEATURES`, statistics of that tensor's gradient and moments
    that do not depend on the scale of the loss or of the parameters, and outputs two
    numbers: the tensor's step-size factor, bounded to `[1 / max_factor, max_factor]`
    times `learning_rate`, and a weight in [-1, 1] on the normalised current gradient added
    to Adam's direction (Nesterov-like when positive). The output layer starts at zero, so
    an untrained net is exactly `keras.optimizers.Adam(learning_rate, beta1, beta2,
    epsilon)`: a nominal hand-designed step with a bounded learned correction, which stays
    stable on models unlike the ones it was trained on (Harrison et al. 2022).

    `decay_steps`, if set, makes the nominal step decay as `decay_steps / t` after
    `decay_steps` steps, and caps the training-progress feature there: the LSTM is
    meta-trained on runs of about that length, and what it learned stops changing with time
    beyond them, where the hand-designed decay takes over (BUILD_NOTES.md).

    `gradient_decay` slows the step further once the gradients have shrunk: after
    `gradient_decay_steps` (default: `decay_steps`) it is also multiplied by
    `min(1, r) ** gradient_decay`, `r` the tensor's gradient RMS over about the last 100 steps
    divided by the same RMS at step `gradient_decay_steps`. Adam's normalised step is as large
    when a model that fits its training set has shrunk its gradients 100-fold as when they
    were large, so it keeps memorising at full speed and the held-out loss rises; SGD's step
    would shrink with the gradient. A model that still underfits keeps its gradients, and its
    step (BUILD_NOTES.md, "Session 11"). Starting it before the decay in time lets a model
    that fits its training set early slow down early, while one that still underfits keeps
    its step for longer (BUILD_NOTES.md, "Session 15").

    `burstiness_gate` (k) tells those two apart by how the gradient shrinks: the gradient
    decay's exponent is multiplied by `min(1, b / (s * b_ref)) ** k`, `b` the RMS over about
    the last 100 steps of the change in log mean squared gradient from one step to the next,
    `b_ref` its value at `gradient_decay_steps` and s `burstiness_threshold`. A classifier
    that fits its training set is left with gradients carried by the few examples it still
    gets wrong, so their power jumps from batch to batch and `b` grows (1.1-2.6x by step 3000
    on MNIST's classifiers); an autoencoder whose reconstruction error shrinks everywhere has
    smaller gradients that get smoother (`b` about 0.6x), and the gate gives it back its step
    (BUILD_NOTES.md, "Session 18"). Step-to-step changes, not deviations from an average,
    so that a steady fall of the gradients does not count as burstiness. With s above 1
    the full decay waits until `b` has grown s-fold, which models that still underfit
    (`b` 1.2-1.3x on MNIST) do not reach and models that memorise (1.7-2.9x) do.

    `gradient_stop` (r0), if set, stops a tensor whose gradient RMS ratio `r` has fallen below
    it: the step is also multiplied by `min(1, r / r0) ** (gradient_stop_exponent * gate)`,
    `gate` the burstiness gate's factor (1 without it). The gradient decay alone leaves a
    deep ReLU MLP that has fit its training set at under 1% of Adam's step, and its held-out
    loss still rises 2% per epoch: Adam's normalised step keeps growing every margin while
    the gradient's direction holds, and six layers compound it. A steeper gradient decay
    stops it, but also slows the models that still fit (`r` 0.4-0.6, bursty too); a wall
    below r0 leaves those alone (BUILD_NOTES.md, "Session 28").

    `gradient_stop_latch` makes the stop read the lowest `r` reached so far instead of the
    current one: a stopped tensor stays stopped when its gradients grow back. Below r0 the
    step grows with r as `r ** (gradient_decay + gradient_stop_exponent)`, so gradients that
    grow with a too-large step enlarge the step further: a burst late in training lifted the
    stop of a small data set's MLP within seven epochs and its training loss climbed 100-fold
    (BUILD_NOTES.md, "Session 29"). Latched, the stop leaves that loop only the gradient
    decay's gain, which recovered from the same burst (BUILD_NOTES.md, "Session 30").

    `gradient_decay_latch` (k >= 1, or None) makes the gradient decay read `min(r, k *
    lowest r)`: gradients that grow back may pull the step back up to k times (in RMS) the
    lowest ratio, and no further. Once a model has fit its training set, a step a little
    too large makes the loss, and the gradients, jump, and under the free decay the step
    then grows as `r ** gradient_decay` with them: on the 8 x 8 digits' dropout MLP three
    seeds of eight ended 60 epochs at 0.09-0.13 test loss that way, against 0.02-0.04 with
    k = 1. But the lowest of a noisy average is below its typical value, so k = 1 also
    ratchets the decay on noise (1-2% on MNIST's dropout MLP and LSTM); k = 1.1 keeps
    every MNIST model measured within 0.3% of the free decay and half the digits' gain
    (BUILD_NOTES.md, "Session 31"); the default has it since session 32.

    `restart_ratio` (R, or None), with the gradient decay: a tensor whose gradient power p
    rises above `R ** 2` times p_ref (its RMS R-fold above step `gradient_decay_steps`'s)
    starts afresh: every entry of its state returns to zero, as a new optimizer's would,
    warm-up and decays included. Its rules count steps and hold their lowest ratio, which
    is right within one task; but when `fit` goes on to new data with the same optimizer (a
    second task), the decays and the stop that the first task left slowed the new one: after
    7,200 steps on digits 0-4, 5 epochs on digits 5-9 ended 29% behind `Adam()`, and 35%
    behind a new `LearnedOptimizer()` (BUILD_NOTES.md, "Session 38"). A new task's first
    gradients are many times those of a fitted model; within one task the gradient power
    stays below step `gradient_decay_steps`'s or close to it.

    `restart_delay` (N, or None: each tensor on its own) reads the restart over every tensor
    the net steps: a tensor whose ratio crosses R restarts at once only if no tensor has
    restarted within the last `gradient_decay_steps` steps (the youngest tensor's step
    count, pooled before the step, is at least that), and N steps after such a restart every
    tensor older than `gradient_decay_steps` restarts too. A new task is the model's, not a
    tensor's: going on to a second task, the sigmoid MLP's last layer crossed 4 within two
    steps, but its hidden kernel never did on four seeds of six and kept the first task's
    decays and stop (0.24-0.28 test loss, against 0.165 with a new optimizer). Restarting
    every tensor at once ends level with a new optimizer. The last layer first and the rest
    N = 100 steps later does better than either, as a new last layer fitted to features
    held still before they train too: 0.10-0.14 on every seed, and the ReLU MLP, whose
    tensors all crossed within a few steps, 0.134 -> 0.101 (BUILD_NOTES.md, "Session 65").
    Within one task the delay changes only runs in which a tensor restarts (and one where a
    variable gets its first gradient late in the run: its young step count reads as a
    restart). That is rare but happens: on MNIST's raw 0-255 pixels the ReLU MLP's output
    kernel restarted at step 1,192 of seed 0, and there the delay's follow-up restart of
    every other tensor cost 9% of test loss after 20 epochs (0.300 -> 0.328; BUILD_NOTES.md,
    "Session 66"). Not the default for that reason.

    `restart_follow_ratio` (F, or None: every tensor follows) narrows the follow-up to the
    tensors whose own ratio is above F at that step: those a new task has stirred. There
    the raw-pixel MLP's other tensors read 0.7-0.94, while the second task's sigmoid hidden
    kernel, peaked at 3.86 twelve steps in, still read 2.68 a hundred steps after the last
    layer restarted (seed 1; BUILD_NOTES.md, "Session 66").

    `drift_brake` (q0, or 0: off) slows a tensor whose parameters have stopped drifting and
    only jitter: after step `drift_brake_steps` its step is multiplied by `clip(q / q0,
    DRIFT_BRAKE_FLOOR, 1)`, `q` the average over about the last 100 steps of `<D, u>` over
    that of `|u|^2 / 2`, u the tensor's update and D its displacement from the average of
    its last ~100 values (kept from the updates alone: `D <- 0.99 (D + u)`), both as the
    last step left them. While a tensor moves one way its updates follow its displacement
    and q is large (6-140 on MNIST's and generated classifiers, and on regressions that
    still fit; 3-12 on MNIST's autoencoder). Where the loss has reached the floor that
    minibatch noise leaves, the updates go back and forth about a point and q falls to
    about 1 or below, the regime in which a smaller step gives a smaller loss (a
    stationarity test, as in Lang et al. 2019 and Zhang et al. 2020). A noisy regression's
    gradients keep their size there, so the gradient rules never act on it: its step
    stayed at ~3.5x `Adam()`'s and its held-out loss 7-20% above `Adam()`'s after 5 epochs
    (BUILD_NOTES.md, "Session 46"). A smaller step makes q rise again (the jitter relaxes
    more slowly), so the brake settles where q is about q0. It keeps D, one more float per
    coordinate: 3 in all, against Adam's 2.

    `drift_brake_scope` says whose q brakes a tensor: "tensor", its own; "net", one q pooled
    over every tensor the net steps (the sums of their `<D, u>` over the sums of their `|u|^2
    / 2`, as the last step left them: `pooled`), so a model is braked as a whole, once most
    of its update (its large kernels, in effect) only jitters. Where the loss has reached a
    noisy regression's floor every tensor jitters, and the pooled q falls below 1; in
    models that still learn, some tensors jitter while the rest descend (a dropout MLP's
    biases read q 0.4-4 while its kernels read 8-17, an autoencoder's code-layer kernels
    0.3-1.7), and braking those alone cost 1-4% of held-out loss over 20 epochs on MNIST's
    models, where the pooled q stays near 4 or above (BUILD_NOTES.md, "Session 48").

    `distance_boost` (d0, or 0: off) enlarges every step of a model that its steps carry
    far in one direction: after step `distance_boost_steps` the step is multiplied by `1 +
    (clip(d / d0, 1, distance_boost_cap) - 1) x decay_steps / max(t, decay_steps)`, d the
    largest up to step `decay_steps` of Prodigy's estimate of the distance from the initial
    weights to a solution (Mishchenko & Defazio 2023), pooled over every tensor the net
    steps: `sum n / sum |s|_1`, each tensor keeping `n <- b n - <g, T>` and `s <- b s + g`
    (b = `DISTANCE_DECAY`), T its travel since the first step (the sum of its updates as
    the net made them, before `learning_rate` and the weight decay), as the last step left
    them. For a convex loss d is below the largest coordinate's distance to a minimum. Read
    along the default's own steps over 5 epochs of MNIST, it ended at 0.002-0.01 on the
    models whose best Adam rate is `Adam()`'s, 0.02-0.05 on those that want 3x, and
    0.14-0.23 on the three where Adam at 10-30x beat the default; the same ranking held on
    a generated regression, its target scaled or not (BUILD_NOTES.md, "Session 58"). Rules
    that read a step's agreement with the last ones (a hypergradient, the drift ratio) had
    not told those models apart. The boost's excess fades as the decay in time does, and d
    is not read after the decay starts: the best constant rate of a model falls with the
    length of its run, and a boost that still grew late cost the ReLU MLP 7% over 20 epochs.
    It keeps T and s, two more floats per coordinate. Each tensor keeps the largest d it has
    read itself, up to its own step `decay_steps`: every tensor steps at every step, so in
    one run all keep the same d, but a tensor that `restart_ratio` restarts, as on a new
    task, reads d again, and one that goes on keeps its own. Taking the largest d over the
    model instead let what the restarted tensors read at a new task's first steps (the
    estimate then mixing the old task's travel with the new task's gradients) raise every
    tensor's boost, and a sigmoid MLP going on to a second task lost 17% (BUILD_NOTES.md,
    "Session 60").

    `distance_boost_read_floor` (r0, or 0: off) stops the read of d once the model fits its
    training set: d is read only while r >= r0, r the model's gradient RMS over step
    `distance_boost_steps`'s (`sqrt(sum P / sum P_ref)`, P each tensor's sum of squared
    gradients averaged over about the last 100 steps, P_ref its value at step
    `distance_boost_steps`). d grows with the steps, not with the data: on 5,000 MNIST images
    it rose as on 50,000, so without the floor the boost came when the model was already
    memorising (from epoch 6, 40 steps an epoch), cost the sigmoid MLP 6% over 20 epochs, and
    a late, small boost tipped a CNN whose test loss was already turning up (BUILD_NOTES.md,
    "Session 58"). A model that memorises loses its gradients within a few hundred steps
    (r^2 0.5 at step 400, 0.3 at step 600 on 5,000 images), one that learns from fresh
    examples slowly (0.73 and 0.68 on 50,000); the floor keeps the boost that d set before
    (session 59). Scaling the boost down with r as well mended the small-data cost fully,
    but took the gain from regressions whose gradients collapse once their output fits the
    target's mean.

    `distance_boost_decayed_travel` counts a decoupled weight decay's pull in T, so that T is
    the variable's displacement and not only the sum of the net's updates. Without it, a
    decay that holds the weights back leaves the gradients pointing along T, so `<g, T>`
    and d grow faster than without the decay: on 5,000 MNIST images with `weight_decay=1`
    the ReLU MLP's d passed 0.05 (0.056, against 0.043 without the decay) and its boost cost
    it 3.7% (BUILD_NOTES.md, "Session 64"). Prodigy's own estimate reads the weights'
    displacement, decay included. Off in the default: over every table with a decayed
    default it was a wash (mean log validation ratio -0.0006 over 216 runs), taking back
    those costs on 5,000 images and giving back the boost's gains under the decay on 50,000.

    `distance_boost_read_ceiling` (r1, or None: off) also stops the read while r > r1: d is
    an estimate for gradients that settle, and where they grow several-fold instead the
    weights are not closing on a far solution but sharpening one they have. On a text
    classifier (an `Embedding` averaged into a linear head, generated reviews) the head's
    weights grew, the embedding's gradients with them, r reached 7 by step 400, and d, read
    on to step 1,400, reached 0.14: a 2.8x boost on a model that memorises its reviews from
    the second epoch (held-out loss after 5 epochs 0.517, with a ceiling of 2 0.445, against
    `Adam()`'s 0.449; BUILD_NOTES.md, "Session 67"). On the models the boost is for, r stayed
    at 1 or below in probes (the sigmoid MLP, the bag of pixels, unscaled regressions), and
    there the ceiling changes no bit.

    `vector_max_factor` (c, or None: `max_factor`) bounds the factor of vectors and scalars
    (biases, normalisation scales) at c. The LSTM, meta-trained on MNIST's MLPs, steps
    biases at up to 20-50x `Adam()`'s rate (kernels at 2-4x). On a model that starts on a
    plateau, as keras.io's 1-D CNN text classifier does under every optimizer, a bias's
    gradient has no steady sign, and at that step the biases random-walk until their ReLU
    units are dead for good: the default holds that model at chance at any factor tried.
    With c = 1 its units live, and at `learning_rate=0.3` it learns (held-out loss 0.507
    after 5 epochs, below the tuned Adam's 0.535); at factor 1 it stays at chance (its
    kernels' 2-3x is too large for it as well). On MNIST's main models the cap
    changed the held-out loss after 5 epochs by -2.5% to 0; on unscaled friedman1, whose
    output must travel to the target's mean of 14, it cost the MLPs 19% after 5 epochs
    and 14% after 20 (geometric means; BUILD_NOTES.md, "Session 69"). Not in the default.

    `dead_unit_share` (z, or None: off) holds every tensor's factor at most 1 (Adam's step,
    then the rules') from the step after any vector's share of exact zeros in its gradient,
    averaged over about 10 steps, has reached z. A ReLU layer's bias has a zero there for
    each unit that no example of the batch activates; a share near 1 says the layer has
    all but died, and with it the model's training. On keras.io's 1-D CNN text classifier,
    which starts on a plateau where every review looks alike to it, the learned factors
    (2-3x on kernels, 20x on biases) take its dense layer's and second convolution's units
    from 40-50% inactive to 92-100% within about 200 steps and hold it at chance, where
    Adam's step leaves 70% inactive for a while and then learns. At z = 0.8 the cap comes at
    about step 110 and the model learns (held-out loss 0.513 after 5 epochs, the tuned
    Adam's 0.535); at 0.9 it came too late on two seeds of three (BUILD_NOTES.md, "Session
    70"). Elsewhere the averaged share stayed lower under the default: at most 0.34 on
    MNIST's ReLU models, 0.62 in deep ReLU MLPs and unscaled regressions, 0.74 on a ReLU
    MLP fed pixels left at 0-255, where the learned factors pay most. Kernels are not read:
    their zeros also come from inputs that are zero, as MNIST's border pixels are (40% of
    the first kernel's gradient). Not in the default.

    `warmup_steps`, if set, phases the learned correction in: its log step-size factor and
    gradient weight are scaled by `min(1, t / warmup_steps)` (t = 1 at the first step), so
    that the step starts at Adam's and reaches the learned one at step `warmup_steps`.
    Steps several times Adam's in the first hundred steps, where every gradient of a fresh
    model points the same way, push most ReLU units of deep MLPs and regression heads dead
    for good; gradient meta-training cannot see that cost, since a dead unit has no gradient
    (BUILD_NOTES.md, "Session 10").

    Lazy rows (`lazy_rows`): given `held` (a sparse gradient's rows, `dense_gradient`), the
    rows a batch did not hold take no step, and the drift brake's displacement and the
    distance boost's travel, which read the step, see none there; Adam's moments and the
    features still see those rows' zero gradient, as in Keras's dense Adam. Dense, a rare
    word's row of a text classifier's `Embedding` moves on its momentum for tens of steps
    after each review that holds it; on generated reviews lazy rows took the tutorial's
    model's held-out loss after 5 epochs from 0.517 to 0.394 (`Adam()` 0.449), and the bag
    of pixels' from 0.1655 to 0.1633 (BUILD_NOTES.md, "Session 68").

    Not elementwise: a tensor's features are means over all its coordinates, so stepping a
    concatenation of tensors is not stepping each. State per tensor: `(m, v, t, h_0, c_0,
    ..., p, p_ref)`, m and v of the tensor's shape, the step count t and the LSTM's h, c as
    `[1, n]`, p the mean squared gradient averaged over about 100 steps and p_ref its value at
    step `gradient_decay_steps`, both kept only with `gradient_decay` (last, so that a state saved
    before they existed loads as p_ref = 0, which leaves the step as it was), then,
    only with `burstiness_gate`, `(l, b, b_ref)`: the last step's log mean squared gradient, the
    average of its squared changes and that average at `gradient_decay_steps` (b_ref = 0, as
    in a state saved before they existed, leaves the gradient decay as it was), then, only
    with `gradient_stop_latch` or `gradient_decay_latch`, `(d,)`: 1 minus the lowest `r ** 2`
    so far (0, as in a state saved before it existed, holds nothing back), then, only with
    `drift_brake`, `(D, s)`: the displacement, of the tensor's shape, and `[<D, u>, |u|^2 /
    2]` averaged, then, only with `distance_boost`, `(T, s, [n, |s|_1, d, P, P_ref])`: the
    travel and the gradient sum, of the tensor's shape, the boost's sums and largest
    estimate, and the read floor's gradient powers (kept with the floor off too: two floats
    per tensor), then, only with `dead_unit_share`, `([z, z_max],)`: the share of exact zeros
    in the tensor's gradient averaged over about 10 steps, and the largest that average has
    been (both 0 for kernels).
    """

    lazy_rows = True

    FEATURES = (
        "mean |Adam step|",  # mean |m_hat| / (sqrt(v_hat) + eps): ~1 when gradients agree
        "mean |normalised gradient|",  # mean |g| / (sqrt(v_hat) + eps)
        "cos(gradient, momentum)",  # < 0 when the step oscillates
        "gradient power trend",  # log(mean g^2 / mean v), clipped to [-5, 5], / 5
        "training progress",  # log(1 + t) / 10, t capped at decay_steps
        "is a vector or scalar",  # 1 for biases and scales, -1 for kernels
        "fan-in",  # log(inputs per output unit) / 5: all but the last axis of a kernel, else 1
    )
    OUTPUTS = ("log step-size factor", "gradient weight")
    POWER_DECAY = 0.99  # of the gradient power average p: about the last 100 steps
    DRIFT_DECAY = 0.99  # of the displacement D and the drift brake's averages: ~100 steps
    DRIFT_BRAKE_FLOOR = 0.1  # the least the drift brake leaves of a step: Adam()'s kernel step
                             # is ~0.3 of the default's, a noisy regression's best ~0.1
    DISTANCE_DECAY = 0.999 ** 0.5  # of the distance estimate's sums: Prodigy's beta3
    DEAD_UNIT_DECAY = 0.9  # of the dead-unit share's average: ~10 steps

    def __init__(self, layers=(16,), learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-7,
                 max_factor=30.0, vector_max_factor=None, decay_steps=None, warmup_steps=None,
                 gradient_decay=0.0,
                 gradient_decay_steps=None, burstiness_gate=0.0, burstiness_threshold=1.0,
                 gradient_stop=0.0, gradient_stop_exponent=8.0, gradient_stop_latch=False,
                 gradient_decay_latch=None, restart_ratio=None, restart_delay=None,
                 restart_follow_ratio=None,
                 drift_brake=0.0,
                 drift_brake_steps=200, drift_brake_scope="tensor", distance_boost=0.0,
                 distance_boost_cap=4.0, distance_boost_steps=200, distance_boost_read_floor=0.0,
                 distance_boost_decayed_travel=False, distance_boost_read_ceiling=None,
                 dead_unit_share=None, initializer=None):
        super().__init__(layers, initializer)
        self.learning_rate = float(learning_rate)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.epsilon = float(epsilon)
        self.max_factor = float(max_factor)
        if not self.max_factor >= 1.0:
            raise ValueError(f"max_factor must be at least 1, got {max_factor!r}.")
        self.vector_max_factor = None if vector_max_factor is None else float(vector_max_factor)
        if self.vector_max_factor is not None and not (
                1.0 / self.max_factor <= self.vector_max_factor <= self.max_factor):
            raise ValueError("vector_max_factor bounds the step-size factor of vectors and "
                             f"scalars within max_factor's [1/{self.max_factor:g}, "
                             f"{self.max_factor:g}], got {vector_max_factor!r}: pass a value "
                             "in that range, or None for max_factor's bound.")
        self.decay_steps = None if decay_steps is None else float(decay_steps)
        if self.decay_steps is not None and not self.decay_steps >= 1:
            raise ValueError(f"decay_steps must be at least 1 (or None), got {decay_steps!r}.")
        self.warmup_steps = None if warmup_steps is None else float(warmup_steps)
        if self.warmup_steps is not None and not self.warmup_steps >= 1:
            raise ValueError(f"warmup_steps must be at least 1 (or None), got {warmup_steps!r}.")
        self.gradient_decay = float(gradient_decay)
        if not self.gradient_decay >= 0:
            raise ValueError(f"gradient_decay must be at least 0, got {gradient_decay!r}.")
        self.gradient_decay_steps = (self.decay_steps if gradient_decay_steps is None
                                     else float(gradient_decay_steps))
        if self.gradient_decay_steps is not None and not self.gradient_decay_steps >= 1:
            raise ValueError("gradient_decay_steps must be at least 1 (or None: decay_steps), "
                             f"got {gradient_decay_steps!r}.")
        if self.gradient_decay and self.gradient_decay_steps is None:
            raise ValueError("gradient_decay starts at gradient_decay_steps, by default "
                             "decay_steps: set one of them, or gradient_decay=0.")
        self.burstiness_gate = float(burstiness_gate)
        if not self.burstiness_gate >= 0:
            raise ValueError(f"burstiness_gate must be at least 0, got {burstiness_gate!r}.")
        self._require_gradient_decay("burstiness_gate", self.burstiness_gate)
        self.burstiness_threshold = float(burstiness_threshold)
        if not self.burstiness_threshold > 0:
            raise ValueError("burstiness_threshold must be above 0 (1: the burstiness at "
                             f"gradient_decay_steps), got {burstiness_threshold!r}.")
        self.gradient_stop = float(gradient_stop)
        if not 0 <= self.gradient_stop <= 1:
            raise ValueError("gradient_stop is a ratio of gradient RMS, from 0 (off) to 1, got "
                             f"{gradient_stop!r}.")
        self._require_gradient_decay("gradient_stop", self.gradient_stop)
        self.gradient_stop_exponent = float(gradient_stop_exponent)
        if not self.gradient_stop_exponent > 0:
            raise ValueError("gradient_stop_exponent must be above 0, got "
                             f"{gradient_stop_exponent!r}.")
        self.gradient_stop_latch = bool(gradient_stop_latch)
        if self.gradient_stop_latch and not self.gradient_stop:
            raise ValueError("gradient_stop_latch holds the gradient stop, and gradient_stop is "
                             "0: set gradient_stop too, or gradient_stop_latch=False.")
        # True, as a file saved before the slack existed has it, is a slack of 1. Compared by
        # identity: 0 == False, and a slack of 0 is an error, not "off".
        self.gradient_decay_latch = (None if gradient_decay_latch is None
                                     or gradient_decay_latch is False
                                     else float(gradient_decay_latch))
        if self.gradient_decay_latch is not None and not self.gradient_decay_latch >= 1:
            raise ValueError("gradient_decay_latch is how far above its lowest the gradient "
                             "ratio may pull the decay back, at least 1 (1: held at the "
                             f"lowest) or None (off), got {gradient_decay_latch!r}.")
        self._require_gradient_decay("gradient_decay_latch",
                                     self.gradient_decay_latch is not None)
        self.restart_ratio = None if restart_ratio is None else float(restart_ratio)
        if self.restart_ratio is not None and not self.restart_ratio > 1:
            raise ValueError("restart_ratio is how many times step gradient_decay_steps's "
                             "gradient RMS starts a tensor afresh, above 1, or None (off), got "
                             f"{restart_ratio!r}.")
        self._require_gradient_decay("restart_ratio", self.restart_ratio is not None)
        self.restart_delay = None if restart_delay is None else float(restart_delay)
        if self.restart_delay is not None and self.restart_ratio is None:
            raise ValueError("restart_delay spreads a restart over the model, and restart_ratio "
                             "is None (no restart): set restart_ratio too, or "
                             "restart_delay=None.")
        if self.restart_delay is not None and not (
                self.restart_delay >= 1 and self.restart_delay == int(self.restart_delay)
                and self.restart_delay < self.gradient_decay_steps):
            raise ValueError("restart_delay is how many steps after the first tensors restart "
                             "the others follow, a whole number from 1 to below "
                             f"gradient_decay_steps ({self.gradient_decay_steps:g}), or None, "
                             f"got {restart_delay!r}.")
        self.restart_follow_ratio = (None if restart_follow_ratio is None
                                     else float(restart_follow_ratio))
        if self.restart_follow_ratio is not None and self.restart_delay is None:
            raise ValueError("restart_follow_ratio picks the tensors that follow a restart "
                             "restart_delay steps later, and restart_delay is None: set "
                             "restart_delay too, or restart_follow_ratio=None.")
        if self.restart_follow_ratio is not None and not (
                1 <= self.restart_follow_ratio < self.restart_ratio):
            raise ValueError("restart_follow_ratio is the gradient RMS ratio above which a "
                             "tensor follows a restart, from 1 to below restart_ratio "
                             f"({self.restart_ratio:g}), or None (every tensor follows), got "
                             f"{restart_follow_ratio!r}.")
        self.drift_brake = float(drift_brake)
        if not self.drift_brake >= 0:
            raise ValueError("drift_brake is the drift ratio below which a tensor's step "
                             f"shrinks, above 0 (or 0: off), got {drift_brake!r}.")
        self.drift_brake_steps = float(drift_brake_steps)
        if not self.drift_brake_steps >= 1:
            raise ValueError("drift_brake_steps is the step after which the drift brake acts, "
                             f"at least 1, got {drift_brake_steps!r}.")
        if drift_brake_scope not in ("tensor", "net"):
            raise ValueError('drift_brake_scope is whose drift ratio brakes a tensor, "tensor" '
                             f'(its own) or "net" (pooled), got {drift_brake_scope!r}.')
        if drift_brake_scope == "net" and not self.drift_brake:
            raise ValueError('drift_brake_scope="net" pools the drift brake\'s ratio, and '
                             "drift_brake is 0 (off): set drift_brake too, or, to turn the "
                             'brake off, drift_brake_scope="tensor" with it.')
        self.drift_brake_scope = drift_brake_scope
        self.distance_boost = float(distance_boost)
        if not self.distance_boost >= 0:
            raise ValueError("distance_boost is the distance estimate above which every step "
                             f"grows, above 0 (or 0: off), got {distance_boost!r}.")
        self.distance_boost_cap = float(distance_boost_cap)
        if not self.distance_boost_cap >= 1:
            raise ValueError("distance_boost_cap is the most the distance boost multiplies a "
                             f"step by, at least 1, got {distance_boost_cap!r}.")
        self.distance_boost_steps = float(distance_boost_steps)
        if not self.distance_boost_steps >= 1:
            raise ValueError("distance_boost_steps is the step after which the distance boost "
                             f"acts, at least 1, got {distance_boost_steps!r}.")
        self.distance_boost_read_floor = float(distance_boost_read_floor)
        if not 0 <= self.distance_boost_read_floor < 1:
            raise ValueError("distance_boost_read_floor is the model's gradient RMS, relative to "
                             "step distance_boost_steps's, below which the distance boost no "
                             "longer reads its estimate, in [0, 1) (0: off), got "
                             f"{distance_boost_read_floor!r}.")
        if self.distance_boost_read_floor and not self.distance_boost:
            raise ValueError("distance_boost_read_floor acts on the distance boost, and "
                             "distance_boost is 0 (off): set distance_boost too, or "
                             "distance_boost_read_floor=0.")
        self.distance_boost_decayed_travel = bool(distance_boost_decayed_travel)
        if self.distance_boost_decayed_travel and not self.distance_boost:
            raise ValueError("distance_boost_decayed_travel acts on the distance boost, and "
                             "distance_boost is 0 (off): set distance_boost too, or "
                             "distance_boost_decayed_travel=False.")
        self.distance_boost_read_ceiling = (None if distance_boost_read_ceiling is None
                                            else float(distance_boost_read_ceiling))
        if self.distance_boost_read_ceiling is not None and not self.distance_boost:
            raise ValueError("distance_boost_read_ceiling acts on the distance boost, and "
                             "distance_boost is 0 (off): set distance_boost too, or "
                             "distance_boost_read_ceiling=None.")
        if self.distance_boost_read_ceiling is not None and not (
                self.distance_boost_read_ceiling > 1):
            raise ValueError("distance_boost_read_ceiling is the model's gradient RMS, relative "
                             "to step distance_boost_steps's, above which the distance boost "
                             "no longer reads its estimate, above 1 (None: off), got "
                             f"{distance_boost_read_ceiling!r}.")
        self.dead_unit_share = None if dead_unit_share is None else float(dead_unit_share)
        if self.dead_unit_share is not None and not 0 < self.dead_unit_share <= 1:
            raise ValueError("dead_unit_share is the share of exact zeros in a vector's "
                             "gradient (a ReLU layer's dead units) from which every step-size "
                             "factor is held at most 1, in (0, 1], or None (off), got "
                             f"{dead_unit_share!r}.")
        self._check_initializer()

    def _require_gradient_decay(self, name, value):
        """`name` acts on the gradient decay (its exponent or its ratio): set without it, it
        would silently do nothing."""
        if value and not self.gradient_decay:
            raise ValueError(f"{name} acts on the gradient decay, and gradient_decay is 0: set "
                             f"gradient_decay too, or {name}=0.")

    def weight_shapes(self):
        shapes = {}
        fan_in = len(self.FEATURES)
        for i, units in enumerate(self.layers):
            shapes[f"lstm_{i}"] = {"w_gates": (fan_in + units, 4 * units),
                                   "b_gates": (4 * units,)}
            fan_in = units
        shapes["linear"] = {"w": (fan_in, len(self.OUTPUTS)), "b": (len(self.OUTPUTS),)}
        return shapes

    def default_weight(self, module, field, shape, seed, index):
        if module == "linear":  # an untrained net is Adam
            return tf.zeros(shape, tf.float32)
        return super().default_weight(module, field, shape, seed, index)

    def state_shapes(self, param_shape):
        lstm = tuple((1, units) for units in self.layers for _ in ("h", "c"))
        drift = ((tuple(param_shape), (2,)) if self.drift_brake else ())
        distance = ((tuple(param_shape),) * 2 + ((5,),) if self.distance_boost else ())
        dead = ((2,),) if self.dead_unit_share is not None else ()
        return ((tuple(param_shape), tuple(param_shape), (1,)) + lstm
                + ((1,),) * ((5 if self.burstiness_gate else 2) + self._holds_lowest_ratio)
                + drift + distance + dead)

    @property
    def _power_slot(self):
        """Where p (then p_ref) sits in the state: after m, v, t and the LSTM's h, c."""
        return 3 + 2 * len(self.layers)

    @property
    def _holds_lowest_ratio(self):
        """Whether the state keeps the lowest gradient ratio so far (the slot `d`)."""
        return self.gradient_stop_latch or self.gradient_decay_latch is not None

    def features(self, gradient, m, v, t):
        """`[1, len(FEATURES)]` for one tensor; `t` is the step count (a scalar, so that a
        scalar variable's step stays a scalar), 1 at the first step."""
        v_correction = 1.0 - tf.pow(self.beta2, t)  # v_hat = v / v_correction
        denominator = tf.sqrt(v) + self.epsilon
        adam_step = tf.sqrt(v_correction) / (1.0 - tf.pow(self.beta1, t)) * m / denominator
        normalised = tf.sqrt(v_correction) * gradient / denominator
        tiny = 1e-30
        cosine = tf.reduce_sum(gradient * m) / tf.sqrt(
            tf.reduce_sum(tf.square(gradient)) * tf.reduce_sum(tf.square(m)) + tiny)
        trend = tf.math.log((tf.reduce_mean(tf.square(gradient)) + tiny)
                            * v_correction / (tf.reduce_mean(v) + tiny))
        values = [
            tf.reduce_mean(tf.abs(adam_step)),
            tf.reduce_mean(tf.abs(normalised)),
            cosine,
            tf.clip_by_value(trend, -5.0, 5.0) / 5.0,
            tf.math.log1p(t if self.decay_steps is None
                          else tf.minimum(t, self.decay_steps)) / 10.0,
            tf.constant(1.0 if gradient.shape.rank < 2 else -1.0),
            tf.constant(math.log(_fan_in(gradient.shape)) / 5.0),
        ]
        return tf.reshape(tf.stack([tf.reshape(value, []) for value in values]), [1, -1]), \
            adam_step, normalised

    @property
    def _pools_drift(self):
        return bool(self.drift_brake) and self.drift_brake_scope == "net"

    @property
    def _pools_restart(self):
        return self.restart_delay is not None

    @property
    def _pools_dead_units(self):
        return self.dead_unit_share is not None

    # Where each rule's entries start in the pooled reading. The restart entry comes last, so
    # that the net `LearnedOptimizer` steps (`without_restart`), which reads the reading of
    # the net that has one, finds every other entry where its own layout puts it.
    @property
    def _dead_unit_slot(self):
        return 2 * self._pools_drift

    @property
    def _distance_slot(self):
        return self._dead_unit_slot + self._pools_dead_units

    @property
    def _restart_slot(self):
        return self._distance_slot + 3 * bool(self.distance_boost)

    def pooled_shape(self):
        size = self._restart_slot + self._pools_restart
        return (size,) if size else None

    def pooled(self, states):
        """The drift brake's averages `[<D, u>, |u|^2 / 2]` summed over `states` (with
        `drift_brake_scope="net"`), then the largest share of dead units any tensor has read
        (with `dead_unit_share`), then the distance boost's `[sum of n, sum of |s|_1, sum of
        P / sum of P_ref]` (with `distance_boost`), then the youngest tensor's step count
        (with `restart_delay`)."""
        readings = []
        if self._pools_drift:
            readings.append(tf.add_n([tf.zeros([2])] + [self._split_state(state)[5][-1]
                                                         for state in states]))
        if self._pools_dead_units:
            readings.append(tf.reduce_max(tf.stack(
                [tf.zeros([1])] + [self._split_state(state)[7][0][1:] for state in states]), 0))
        if self.distance_boost:
            sums = tf.stack([tf.zeros([5])] + [self._split_state(state)[6][-1]
                                               for state in states])
            total = tf.reduce_sum(sums, 0)
            readings.append(tf.stack([total[0], total[1], total[3] / (total[4] + 1e-30)]))
        if self._pools_restart:  # with no tensor, older than any: nothing to follow
            readings.append(tf.reduce_min(tf.stack(
                [tf.constant([2.0 ** 24])] + [state[2] for state in states]), 0))
        return tf.concat(readings, 0)

    def _split_state(self, state):
        """`state` as `(m, v, t, lstm_state, rest, drift, distance, dead)`: `rest` holds p,
        p_ref and the burstiness and latch entries; `drift`, `distance` and `dead` are ()
        when off."""
        m, v, t = state[:3]
        lstm_state = state[3:self._power_slot]
        rest = tuple(state[self._power_slot:])
        distance = drift = dead = ()
        if self.dead_unit_share is not None:
            rest, dead = rest[:-1], rest[-1:]
        if self.distance_boost:
            rest, distance = rest[:-3], rest[-3:]
        if self.drift_brake:
            rest, drift = rest[:-2], rest[-2:]
        return m, v, t, lstm_state, rest, drift, distance, dead

    def step(self, weights, gradient, state, pooled=None, held=None):
        if self.pooled_shape() is not None and pooled is None:
            raise ValueError("This TensorwiseLSTM (drift_brake_scope=\"net\", "
                             "restart_delay, dead_unit_share or distance_boost) steps with "
                             "the pooled reading of every tensor it steps: pass step(..., "
                             "pooled=net.pooled(states)).")
        m, v, t, lstm_state, rest, drift, distance, dead = self._split_state(state)
        power, power_reference, *rest = rest
        burstiness, latch = (rest[:3], rest[3:]) if self.burstiness_gate else ((), rest)
        t = t + 1.0
        m = self.beta1 * m + (1.0 - self.beta1) * gradient
        v = self.beta2 * v + (1.0 - self.beta2) * tf.square(gradient)
        features, adam_step, normalised = self.features(gradient, m, v, t[0])
        hidden, lstm_state = deep_lstm(weights, features, lstm_state, self.layers)
        outputs = tf.matmul(hidden, weights["linear"]["w"]) + weights["linear"]["b"]
        log_factor, gradient_weight = tf.unstack(tf.tanh(outputs[0]))
        if (self.vector_max_factor is not None and self.vector_max_factor < self.max_factor
                and gradient.shape.rank < 2):
            log_factor = tf.minimum(log_factor,
                                    math.log(self.vector_max_factor) / math.log(self.max_factor))
        if self.dead_unit_share is not None:
            log_factor, dead = self._dead_unit_capped(log_factor, gradient, *dead, pooled)
        if self.warmup_steps is not None:
            phase_in = tf.minimum(1.0, t[0] / self.warmup_steps)
            log_factor *= phase_in
            gradient_weight *= phase_in
        step_size = self.learning_rate * tf.exp(math.log(self.max_factor) * log_factor)
        if self.decay_steps is not None:
            step_size *= self._time_decay(t[0])
        if self.gradient_decay:
            mean_square = tf.reduce_mean(tf.square(gradient))
            power = self.POWER_DECAY * power + (1.0 - self.POWER_DECAY) * mean_square
            # Both ratios are of mean squares: half their powers make them ratios of RMS.
            gate = 1.0
            if self.burstiness_gate:
                log_power, burst, burst_reference = burstiness
                new_log_power = tf.math.log(tf.reshape(mean_square, [1]) + 1e-30)
                burst = tf.where(t > 1.0, self.POWER_DECAY * burst + (1.0 - self.POWER_DECAY)
                                 * tf.square(new_log_power - log_power), burst)
                log_power = new_log_power
                # b is a mean square: the threshold on its RMS enters squared.
                gate = tf.pow(self._ratio_to_reference(
                    t, burst, burst_reference * self.burstiness_threshold ** 2, lag=1.0),
                    self.burstiness_gate / 2.0)
                burst_reference = tf.where(t <= self.gradient_decay_steps, burst, burst_reference)
                burstiness = (log_power, burst, burst_reference)
            ratio_of_powers = self._unclamped_ratio(t, power, power_reference)[0]
            ratio = tf.minimum(1.0, ratio_of_powers)
            lowest = ratio
            if self._holds_lowest_ratio:
                (depth,) = latch
                lowest = tf.minimum(ratio, 1.0 - depth[0])
                latch = (tf.maximum(depth, 1.0 - ratio),)
            decay_ratio = ratio
            if self.gradient_decay_latch is not None:  # both are ratios of mean squares
                decay_ratio = tf.minimum(ratio, self.gradient_decay_latch ** 2 * lowest)
            step_size *= tf.pow(decay_ratio, self.gradient_decay * gate / 2.0)
            if self.gradient_stop:
                stop_ratio = lowest if self.gradient_stop_latch else ratio
                step_size *= tf.pow(tf.minimum(1.0, stop_ratio / self.gradient_stop ** 2),
                                    self.gradient_stop_exponent * gate / 2.0)
            power_reference = tf.where(t <= self.gradient_decay_steps, power, power_reference)
        update = -step_size * (adam_step + gradient_weight * normalised)
        if held is not None:  # before the brake and the boost, whose statistics read it
            update = update * held
        if self.drift_brake:
            update, drift = self._drift_braked(update, t, *drift, pooled)
        if self.distance_boost:
            update, distance = self._distance_boosted(
                update, gradient, t, *distance,
                pooled[self._distance_slot:self._distance_slot + 3])
        new_state = (m, v, t, *lstm_state, power, power_reference, *burstiness, *latch,
                     *drift, *distance, *dead)
        return update, self.restarted(new_state, pooled)

    def _dead_unit_capped(self, log_factor, gradient, shares, pooled):
        """`log_factor` held at most 0 (a factor of 1) once the model's largest share of dead
        units (`pooled`, as the last step left it) has reached `dead_unit_share`, and the
        tensor's new `[z, largest z]`: z the share of exact zeros in a vector's gradient (a
        unit of a ReLU layer that no example of the batch activates has a zero in its bias's
        gradient) averaged over about the last 10 steps, so that a batch on which most units
        happen to be inactive is not a layer's death; 0 for kernels, whose zeros also come
        from inputs that are zero, as MNIST's border pixels are."""
        if gradient.shape.rank == 1:
            share = tf.reduce_mean(tf.cast(tf.equal(gradient, 0.0), tf.float32))
            average = self.DEAD_UNIT_DECAY * shares[0] + (1.0 - self.DEAD_UNIT_DECAY) * share
            shares = tf.stack([average, tf.maximum(shares[1], average)])
        dead = pooled[self._dead_unit_slot]
        return tf.where(dead >= self.dead_unit_share, tf.minimum(log_factor, 0.0),
                        log_factor), (shares,)

    def _distance_boosted(self, update, gradient, t, travel, gradient_sum, sums, pooled):
        """`update` times the distance boost, and the boost's new `(T, s, [n, |s|_1, d, P,
        P_ref])` (class docstring); `pooled` is the model's `[sum of n, sum of |s|_1, sum of
        P / sum of P_ref]` as the last step left them."""
        estimate = pooled[0] / (pooled[1] + 1e-30)
        largest, power_ratio = sums[2], pooled[2]
        # A ratio of RMS: the powers' ratio is compared with its square.
        reads = power_ratio >= self.distance_boost_read_floor ** 2
        if self.distance_boost_read_ceiling is not None:
            reads = tf.logical_and(reads, power_ratio <= self.distance_boost_read_ceiling ** 2)
        if self.decay_steps is not None:
            reads = tf.logical_and(reads, t[0] <= self.decay_steps)
        largest = tf.where(reads, tf.maximum(largest, estimate), largest)
        excess = tf.clip_by_value(largest / self.distance_boost, 1.0,
                                  self.distance_boost_cap) - 1.0
        boost = tf.where(t[0] > self.distance_boost_steps,
                         1.0 + excess * self._time_decay(t[0]), 1.0)
        update = boost * update
        beta = self.DISTANCE_DECAY
        gradient_sum = beta * gradient_sum + gradient
        # P is a plain mean over the first 100 steps, then an average over about the last 100:
        # unbiased from the first step, so that P_ref does not depend on how early it is set.
        power = sums[3] + tf.maximum(1.0 / t[0], 1.0 - self.POWER_DECAY) * (
            tf.reduce_sum(tf.square(gradient)) - sums[3])
        # |s|_1 is kept beside s so that `pooled`, read before every step, sums scalars only.
        sums = tf.stack([beta * sums[0] - tf.reduce_sum(gradient * travel),
                         tf.reduce_sum(tf.abs(gradient_sum)), largest, power,
                         tf.where(t[0] <= self.distance_boost_steps, power, sums[4])])
        return update, (travel + update, gradient_sum, sums)

    def _drift_braked(self, update, t, displacement, sums, pooled):
        """`update` times the drift brake, and the brake's new `(D, s)` (class docstring)."""
        read = sums
        if self.drift_brake_scope == "net":
            read = pooled[:2]
        drift_ratio = read[0] / (read[1] + 1e-30)
        brake = tf.where(t[0] > self.drift_brake_steps,
                         tf.clip_by_value(drift_ratio / self.drift_brake,
                                          self.DRIFT_BRAKE_FLOOR, 1.0), 1.0)
        update = brake * update
        rho = self.DRIFT_DECAY
        sums = rho * sums + (1.0 - rho) * tf.stack([
            tf.reduce_sum(displacement * update), 0.5 * tf.reduce_sum(tf.square(update))])
        return update, (rho * (displacement + update), sums)

    def restarted(self, state, pooled=None):
        """`state`, or zeros where `gradient_rms_ratio(state)` exceeds `restart_ratio`: after
        step `gradient_decay_steps` the state's p_ref no longer changes, so that is the ratio
        the step read. With `restart_delay` N, only while the youngest tensor's step count
        before the step (`pooled`) is at least `gradient_decay_steps`, and also where that
        count is N - 1 (N steps after a restart, counting this one) and the tensor is older
        than `gradient_decay_steps` (and its ratio above `restart_follow_ratio`, if set)."""
        if self.restart_ratio is None:
            return state
        # A product with 0 or 1: one op per entry where a select took two (its zeros), and
        # outside XLA every op counts; exact where the state is finite, as it always is.
        ratio = self.gradient_rms_ratio(state)
        restart = ratio > self.restart_ratio
        if self._pools_restart:
            youngest = pooled[self._restart_slot]
            follow = ((youngest == self.restart_delay - 1.0)
                      & (state[2][0] > self.gradient_decay_steps))
            if self.restart_follow_ratio is not None:
                follow = follow & (ratio > self.restart_follow_ratio)
            restart = (restart & (youngest >= self.gradient_decay_steps)) | follow
        keep = tf.cast(tf.logical_not(restart), tf.float32)
        return tuple(entry * keep for entry in state)

    def without_restart(self):
        return type(self)(**{**self.get_config(), "restart_ratio": None,
                             "restart_delay": None, "restart_follow_ratio": None,
                             "initializer": self.initializer})

    def gradient_rms_ratio(self, state):
        """The tensor's gradient RMS (its mean square averaged over about 100 steps) over its
        value at step `gradient_decay_steps`, as the last step that made `state` read it,
        unclamped: the gradient rules read it capped at 1, and `restart_ratio` R restarts the
        tensor where it exceeds R. 1 up to step `gradient_decay_steps`. A diagnostic: the
        largest value a run reached says whether a restart threshold would have fired in it,
        without running each threshold (keras_fit.py reports it)."""
        if not self.gradient_decay:
            raise ValueError("gradient_rms_ratio reads the averages of the gradient decay, "
                             "which a net with gradient_decay=0 does not keep.")
        power, power_reference = state[self._power_slot:self._power_slot + 2]
        return tf.sqrt(self._unclamped_ratio(state[2], power, power_reference)[0])

    def boost_distance(self, state):
        """The largest distance estimate d the tensor has read, as the last step that made
        `state` left it. While d is at most `distance_boost` the boost multiplies the step by
        exactly 1, and d is not read after step `decay_steps`, so a run in which every
        tensor's d is at most `distance_boost` there, and no tensor restarts, is stepped as
        without the boost (to the bit where the drift brake does not act; a braked update
        can round differently in the larger compiled step); keras_fit.py ends such a run
        there and takes the run without the boost. A diagnostic, as `gradient_rms_ratio`
        is."""
        if not self.distance_boost:
            raise ValueError("boost_distance reads the distance boost's largest estimate, "
                             "which a net with distance_boost=0 does not keep.")
        return self._split_state(state)[6][-1][2]

    def decay_rate(self, state):
        """`learning_rate` times the decay in time: the nominal step without the learned factor
        (about 3.5x on kernels) or the gradient decay, so that a weight decay shrinks variables
        as AdamW's does at Adam's rate and slows down with the step."""
        return self.learning_rate * self._time_decay(state[2][0] + 1.0)

    def decayed(self, state, pull):
        """With `distance_boost_decayed_travel`, the travel T also takes the weight decay's
        `pull`, so that it is the variable's own displacement, as Prodigy's estimate reads
        it; otherwise `state` as it is."""
        if not self.distance_boost_decayed_travel:
            return state
        travel = len(state) - 3 - len(self._split_state(state)[7])  # (T, s, sums), then z
        return state[:travel] + (state[travel] + pull,) + state[travel + 1:]

    def _time_decay(self, t):
        """`decay_steps / max(t, decay_steps)`; 1 without `decay_steps`."""
        if self.decay_steps is None:
            return 1.0
        return self.decay_steps / tf.maximum(t, self.decay_steps)

    def _ratio_to_reference(self, t, average, reference, lag=0.0):
        """`min(1, average / reference)`, `reference` being `average`'s value at
        `gradient_decay_steps`; both are averages with weight `POWER_DECAY` that started
        `lag` steps after step 1 (the gradient power at step 1, its step-to-step change at
        step 2), and both are debiased. 1 up to `gradient_decay_steps` and while no
        reference exists (0: a state saved before it existed)."""
        return tf.minimum(1.0, self._unclamped_ratio(t, average, reference, lag)[0])

    def _unclamped_ratio(self, t, average, reference, lag=0.0):
        """`average / reference`, both debiased as `_ratio_to_reference` says, as `[1]`; 1
        up to `gradient_decay_steps` and while no reference exists."""
        unbiased = average / (1.0 - tf.pow(self.POWER_DECAY, tf.maximum(t - lag, 1.0)))
        unbiased_reference = reference / (
            1.0 - self.POWER_DECAY ** max(self.gradient_decay_steps - lag, 1.0))
        return tf.where((t > self.gradient_decay_steps) & (reference > 0),
                        unbiased / tf.maximum(unbiased_reference, 1e-30), 1.0)

    def get_config(self):
        return {
            "layers": list(self.layers),
            "learning_rate": self.learning_rate,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "epsilon": self.epsilon,
            "max_factor": self.max_factor,
            "vector_max_factor": self.vector_max_factor,
            "decay_steps": self.decay_steps,
            "warmup_steps": self.warmup_steps,
            "gradient_decay": self.gradient_decay,
            "gradient_decay_steps": self.gradient_decay_steps,
            "burstiness_gate": self.burstiness_gate,
            "burstiness_threshold": self.burstiness_threshold,
            "gradient_stop": self.gradient_stop,
            "gradient_stop_exponent": self.gradient_stop_exponent,
            "gradient_stop_latch": self.gradient_stop_latch,
            "gradient_decay_latch": self.gradient_decay_latch,
            "restart_ratio": self.restart_ratio,
            "restart_delay": self.restart_delay,
            "restart_follow_ratio": self.restart_follow_ratio,
            "drift_brake": self.drift_brake,
            "drift_brake_steps": self.drift_brake_steps,
            "drift_brake_scope": self.drift_brake_scope,
            "distance_boost": self.distance_boost,
            "distance_boost_cap": self.distance_boost_cap,
            "distance_boost_steps": self.distance_boost_steps,
            "distance_boost_read_floor": self.distance_boost_read_floor,
            "distance_boost_decayed_travel": self.distance_boost_decayed_travel,
            "distance_boost_read_ceiling": self.distance_boost_read_ceiling,
            "dead_unit_share": self.dead_unit_share,
        }


def _fan_in(shape):
    """Inputs per output unit of a kernel (all axes but the last: a conv kernel's receptive
    field times its input channels); 1 for vectors and scalars. A static shape is needed."""
    return num_elements(shape[:-1]) if len(shape) >= 2 else 1


class FixedRule(Net):
    """A hand-designed elementwise rule with a `learning_rate`, which is also the rate of a
    decoupled weight decay."""

    elementwise = True

    def decay_rate(self, state):
        return self.learning_rate


class Sgd(FixedRule):
    """Plain gradient descent written as a net, to give a variable group a fixed rule."""

    def __init__(self, learning_rate=0.001):
        self.learning_rate = float(learning_rate)

    def step(self, weights, gradient, state):
        return -self.learning_rate * gradient, ()

    def get_config(self):
        return {"learning_rate": self.learning_rate}


class Adam(FixedRule):
    """Adam written as a net, state (t, m, v) per coordinate as in the original."""

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.learning_rate = float(learning_rate)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.epsilon = float(epsilon)

    def state_shapes(self, param_shape):
        return _coordinate_slots(param_shape, 3)

    def step(self, weights, gradient, state):
        t, m, v = state
        g = tf.reshape(gradient, [-1, 1])
        t = t + 1.0
        m = self.beta1 * m + (1.0 - self.beta1) * g
        v = self.beta2 * v + (1.0 - self.beta2) * tf.square(g)
        m_hat = m / (1.0 - tf.pow(self.beta1, t))
        v_hat = v / (1.0 - tf.pow(self.beta2, t))
        update = -self.learning_rate * m_hat / (tf.sqrt(v_hat) + self.epsilon)
        return tf.reshape(update, tf.shape(gradient)), (t, m, v)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "epsilon": self.epsilon,
        }


class RMSprop(FixedRule):
    """RMSprop (Tieleman and Hinton) as a net: a baseline of the paper, not in the original."""

    def __init__(self, learning_rate=1e-3, decay=0.9, epsilon=1e-8):
        self.learning_rate = float(learning_rate)
        self.decay = float(decay)
        self.epsilon = float(epsilon)

    def state_shapes(self, param_shape):
        return _coordinate_slots(param_shape, 1)

    def step(self, weights, gradient, state):
        (v,) = state
        g = tf.reshape(gradient, [-1, 1])
        v = self.decay * v + (1.0 - self.decay) * tf.square(g)
        update = -self.learning_rate * g / (tf.sqrt(v) + self.epsilon)
        return tf.reshape(update, tf.shape(gradient)), (v,)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "decay": self.decay, "epsilon": self.epsilon}


class Nag(FixedRule):
    """Nesterov's accelerated gradient as a net (the paper's NAG baseline).

    In the look-ahead-free form Keras's SGD(nesterov=True) uses: m = mu m - lr g, and the
    update is mu m - lr g.
    """

    def __init__(self, learning_rate=1e-3, momentum=0.9):
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)

    def state_shapes(self, param_shape):
        return _coordinate_slots(param_shape, 1)

    def step(self, weights, gradient, state):
        (m,) = state
        g = tf.reshape(gradient, [-1, 1])
        m = self.momentum * m - self.learning_rate * g
        update = self.momentum * m - self.learning_rate * g
        return tf.reshape(update, tf.shape(gradient)), (m,)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "momentum": self.momentum}


NETS = {
    cls.__name__: cls
    for cls in (StandardDeepLSTM, CoordinateWiseDeepLSTM, KernelDeepLSTM, TensorwiseLSTM, Sgd,
                Adam, RMSprop, Nag)
}


def deep_lstm(weights, inputs, state, layers):
    """The LSTM stack `lstm_0, lstm_1, ...` on `inputs [rows, d]`: `(hidden, new_state)`,
    with `state` as `(h_0, c_0, h_1, c_1, ...)`."""
    hidden = inputs
    new_state = []
    for i, units in enumerate(layers):
        h, c = state[2 * i], state[2 * i + 1]
        lstm = weights[f"lstm_{i}"]
        # One sigmoid over all gates, the cheapest form on CPU, where this elementwise work
        # costs more than the matmuls: the forget bias is folded into the bias and
        # tanh(j) = 2 sigmoid(2 j) - 1, with the factor 2 folded into the weights.
        gate_scale, gate_shift = _gate_constants(units, hidden.dtype)
        gate_inputs = tf.nn.bias_add(
            tf.matmul(tf.concat([hidden, h], axis=1), lstm["w_gates"] * gate_scale),
            (lstm["b_gates"] + gate_shift) * gate_scale,
        )
        hidden, c = lstm_cell_update(gate_inputs, c)
        new_state += [hidden, c]
    return hidden, tuple(new_state)


def lstm_cell_update(gate_inputs, cell):
    """The LSTM cell's elementwise part: `(hidden, cell)` from the scaled gate inputs.

    `gate_inputs [rows, 4 units]` are ordered (i, j, f, o), with the forget bias and the
    factor 2 of tanh(j) = 2 sigmoid(2 j) - 1 already folded in (see `_gate_constants`), so one
    sigmoid serves all gates. On CPU this part costs as much as the matmuls or more
    (`experiments/benchmark.py --sections=lstm`).
    """
    gate_i, gate_j, gate_f, gate_o = tf.split(tf.sigmoid(gate_inputs), 4, axis=1)
    cell = cell * gate_f + gate_i * (2.0 * gate_j - 1.0)
    return tf.tanh(cell) * gate_o, cell


def _gate_constants(units, dtype):
    """Per-gate column factors and shifts for gates ordered (i, j, f, o): see `core`."""
    ones, zeros = np.ones(units, np.float32), np.zeros(units, np.float32)
    scale = np.concatenate([ones, 2.0 * ones, ones, ones])
    shift = np.concatenate([zeros, zeros, ones, zeros])  # forget-gate bias +1
    return tf.constant(scale, dtype), tf.constant(shift, dtype)


def _initializer_for(initializer, module, field):
    """The original's rule: a per-module dict, else a per-field dict, else one for all."""
    if initializer is None:
        return None
    if isinstance(initializer, dict):
        if module in initializer:
            initializer = initializer[module]
        if isinstance(initializer, dict):
            return initializer.get(field)
    return initializer


def _default_initializer(field, shape, seed, index):
    """Sonnet's defaults: truncated normal with std 1/sqrt(fan_in) for weights, zero biases."""
    if field.startswith("b"):
        return tf.zeros(shape, tf.float32)
    stddev = 1.0 / math.sqrt(shape[0])
    if seed is None:
        return tf.random.truncated_normal(shape, stddev=stddev)
    return tf.random.stateless_truncated_normal(shape, seed=[int(seed), index], stddev=stddev)


def factory(net, net_options=None, net_path=None):
    """Builds a net by class name; with `net_path`, its weights come from that saved file."""
    if net not in NETS:
        raise ValueError(f"Unknown net {net!r}: use one of {sorted(NETS)}.")
    net_options = dict(net_options or {})
    saved = None
    if net_path is not None:
        saved_net, saved_options, net_options["initializer"] = load_weights(net_path)
        if saved_net in NETS:  # options added since the file was written take their defaults
            saved_options = NETS[saved_net](**saved_options).get_config()
        saved = (saved_net, json.loads(json.dumps(saved_options)))
    try:
        built = NETS[net](**net_options)
    except TypeError as error:
        raise ValueError(f"Bad net_options {net_options!r} for {net}: {error}.") from None
    if saved is not None and saved != (net, json.loads(json.dumps(built.get_config()))):
        raise ValueError(
            f"{net_path!r} holds a {saved[0]} trained with options {saved[1]}, not a {net} with "
            f"{built.get_config()}: pass the options it was trained with, or use load_net(path)."
        )
    return built


def net_config(net):
    """`{"net": class name, "net_options": ...}`: what `factory` needs to rebuild `net`."""
    return {"net": type(net).__name__, "net_options": net.get_config()}


def weights_to_numpy(weights):
    return {m: {f: np.asarray(v, np.float32) for f, v in fields.items()} for m, fields in weights.items()}


def save_weights(path, net, weights):
    """Writes a net and its weights to `path` in the l2l_tf net format (atomically).

    Format (version 1): a NumPy `.npz` archive, readable without TensorFlow or pickle. Each
    weight is an array named `module/field` (float32). The entry `__l2l_tf__` is a JSON
    string: {"format": "l2l_tf.net", "format_version": 1, "net": class name, "net_options":
    constructor arguments}. The file is written beside `path` and renamed over it, so a crash
    never leaves a half-written file.
    """
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **net_config(net)}
    arrays = {
        f"{module}/{field}": value
        for module, fields in weights_to_numpy(weights).items()
        for field, value in fields.items()
    }
    arrays[_METADATA_KEY] = np.array(json.dumps(metadata))
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp_path, default_file_mode())  # mkstemp makes 0600 files
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def load_weights(path):
    """Reads a file written by `save_weights`: `(net_name, net_options, weights)`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No net weights file at {path!r}: check the path.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            metadata = json.loads(str(archive[_METADATA_KEY]))
            weights = {}
            for key in archive.files:
                if key != _METADATA_KEY:
                    module, field = key.split("/")
                    weights.setdefault(module, {})[field] = archive[key]
    except Exception as error:
        raise ValueError(
            f"{path!r} is not a readable l2l_tf net file ({type(error).__name__}: {error}); "
            "it may be corrupt or of another format: save it again with save_weights."
        ) from None
    if metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format {metadata.get('format')!r} version "
            f"{metadata.get('format_version')!r}; this l2l_tf reads {FORMAT_NAME!r} version "
            f"{FORMAT_VERSION}: upgrade l2l_tf or re-save the weights."
        )
    return metadata["net"], metadata["net_options"], weights


def load_net(path):
    """Rebuilds the net saved at `path` with its own options and weights."""
    net_name, net_options, _ = load_weights(path)
    return factory(net_name, net_options, net_path=path)


def net_files(path):
    """The net files `load_nets(path)` reads: `path` itself, or a directory's `*.npz`, sorted."""
    if not os.path.isdir(path):
        return [path]
    files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
    if not files:
        raise FileNotFoundError(
            f"No net files (*.npz) in directory {path!r}: pass a directory written by "
            "train.py or MetaOptimizer.save, or a single net file."
        )
    return [os.path.join(path, f) for f in files]


def nets_fingerprint(path):
    """A short hash of the net files at `path` (names and contents): the experiment scripts
    key cached runs of a learned optimizer by it, so that a run is not reused once the files
    it ran with have changed."""
    digest = hashlib.sha256()
    for file in net_files(path):
        digest.update(os.path.basename(file).encode())
        with open(file, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def load_nets(path):
    """`{net_name: Net}` from one net file (named after it) or a directory of `*.npz` nets."""
    return {os.path.basename(p).removesuffix(".npz"): load_net(p) for p in net_files(path)}


def build_nets(nets):
    """Normalises `{name: Net or spec}` into `{name: Net}`."""
    if not isinstance(nets, dict) or not nets:
        raise ValueError(
            f"nets must be a non-empty dict of name -> net or spec, got {nets!r}; "
            "e.g. nets={'cw': {'net': 'CoordinateWiseDeepLSTM'}}."
        )
    built = {}
    for net_name, spec in nets.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", str(net_name)):
            raise ValueError(f"Net name {net_name!r} must use only letters, digits, '_' and '-'.")
        if isinstance(spec, Net):
            built[net_name] = spec
        elif isinstance(spec, dict) and "net" in spec:
            unknown = set(spec) - {"net", "net_options", "net_path"}
            if unknown:
                raise ValueError(
                    f"Net spec for {net_name!r} has unknown keys {sorted(unknown)}: "
                    "use 'net', 'net_options' and 'net_path'."
                )
            built[net_name] = factory(**spec)
        else:
            raise ValueError(
                f"Net {net_name!r} must be a networks.Net or a dict with a 'net' class name, "
                f"got {spec!r}."
            )
    return built


def check_assignments(nets, net_assignments):
    """Validates the original's `net_assignments`: a list of `(net_name, [regex, ...])`.

    Returns it as a list of `(net_name, tuple_of_patterns)`, or `None` for a single net that
    takes every parameter.
    """
    if net_assignments is None:
        if len(nets) > 1:
            raise ValueError(
                f"Several nets {sorted(nets)} need net_assignments: a list of "
                "(net_name, [variable name regex, ...])."
            )
        return None
    checked = []
    for net_name, patterns in net_assignments:
        if net_name not in nets:
            raise ValueError(
                f"net_assignments names net {net_name!r}, which is not one of {sorted(nets)}."
            )
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"Bad pattern {pattern!r} in net_assignments: {error}.") from None
        checked.append((net_name, patterns))
    return checked


def net_for(variable_name, nets, net_assignments):
    """The net that updates `variable_name`: the first whose pattern `re.search`es it."""
    if net_assignments is None:
        return next(iter(nets))
    for net_name, patterns in net_assignments:
        if any(re.search(pattern, variable_name) for pattern in patterns):
            return net_name
    raise ValueError(
        f"Variable {variable_name!r} matches no pattern of net_assignments "
        f"{net_assignments}: add a pattern for it, e.g. a last catch-all (net_name, ['.*'])."
    )


def default_file_mode():
    """0666 minus the process umask: the mode `open()` would have given a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
