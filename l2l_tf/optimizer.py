"""`LearnedOptimizer`: a Keras 3 optimizer whose update rule is a (learned) net.

Shaped like Keras's own optimizers: `__init__` makes the nets' weights, `build` makes one
state slot per model variable, `update_step` is only the math, `get_config` lists every
argument. The math is the net's pure `step` from `networks`, the same function the
meta-trainer differentiates, so a net behaves identically in both.
"""

import functools
import json
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from l2l_tf import networks, presets


# Below this, a factor on the nets' step is more likely an Adam-style rate by habit
# (`learning_rate=1e-3`) than a choice: 0.002 is already a step 500x smaller than trained.
SMALLEST_UNWARNED_FACTOR = 0.002
# The default's kernel step per unit of factor, about 3.5x Adam()'s 0.001 (BUILD_NOTES.md,
# "Session 31"): Adam(lr)'s pace is about `learning_rate=lr / DEFAULT_KERNEL_STEP`.
DEFAULT_KERNEL_STEP = 0.0035


def _require_tensorflow_backend():
    """The nets' step, its XLA compilation and the skipped-step guard are TensorFlow ops on
    the optimizer's variables, written for the TensorFlow backend only: say so where the
    optimizer is made, not somewhere inside the first train step."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"LearnedOptimizer runs on Keras's TensorFlow backend, and Keras is using "
            f"{backend!r}. Set the environment variable KERAS_BACKEND=tensorflow (or "
            '"backend": "tensorflow" in ~/.keras/keras.json) before Keras is imported.'
        )


class SmallFactorWarning(UserWarning):
    """`LearnedOptimizer(learning_rate=...)` got a factor far below 1, as if it were Adam's
    rate. Silence it with `warnings.filterwarnings("ignore", category=SmallFactorWarning)`."""


@keras.saving.register_keras_serializable(package="l2l_tf")
class LearnedOptimizer(keras.optimizers.Optimizer):
    """Applies `variable += learning_rate * net(gradient, state)` to every model variable.

    Args:
        nets: dict from net name to a `networks.Net` or to a spec
            `{"net": class name, "net_options": {...}, "net_path": file}` (the original's
            `MetaOptimizer(**nets)` form). Defaults to the shipped "mnist-keras" optimizer
            (a `TensorwiseLSTM`: Keras's Adam on every coordinate, with each tensor's step
            size set by a 16-unit LSTM, meta-trained on 2000-step runs of nine MNIST MLPs as
            Keras builds them, its learned correction phased in over the first 100 steps,
            its step shrinking with each tensor's gradient after step 700 (less where the
            gradients shrink smoothly rather than in bursts, in full once they are 1.4x as
            bursty as at step 700; following gradients that grow back only to 1.1x their
            lowest ratio), stopping where that gradient has fallen below 30% of step 700's
            (and staying stopped), and decaying as 1400 / t after step 1400; slowed once
            the model's weights only jitter, sped up to 4x where an estimate of the distance
            to a solution says its step is too small, and started afresh, tensor by tensor,
            where a tensor's gradients jump fourfold, as on a new task;
            `l2l_tf/pretrained/mnist-keras/PROVENANCE.md`). The paper's
            coordinatewise LSTM is `from_pretrained("mnist")` or `"mnist-wide"`. An untrained
            net is an explicit choice: `nets=presets.default_nets()`.
        net_assignments: with several nets, a list of `(net_name, [regex, ...])`; a model
            variable goes to the first net with a pattern found (`re.search`) in its `path`.
            With one net it may be omitted: that net updates every variable.
        learning_rate: multiplies the net's output. 1.0 applies the net as trained; schedules
            work as usual. Being a factor, it is often a whole number (`learning_rate=3`),
            which Keras's base class would refuse: an `int` is taken as a float. It is not
            Adam's rate: at 1.0 the default steps kernels at about 3.5x `Adam()`'s (0.001)
            and vectors at about 18x, so `Adam(lr)`'s pace is about `learning_rate=lr /
            0.0035`, and `learning_rate=1e-3` is a thousand times slower than the default.
            A factor (or a schedule's first value) below 0.002 warns
            (`SmallFactorWarning`), since it is more often such a habit than a choice;
            `from_config` does not, as a factor restored from training (lowered by
            `ReduceLROnPlateau`, say) is the one training left.
        seed: seeds the initial weights of nets not loaded from a file.
        jit_compile: compile each variable's learned update (the net's step, the new value
            and the finiteness check) with XLA on its own, whether or not the train step is
            compiled. Keras's `jit_compile="auto"` leaves the train step uncompiled on CPUs,
            where the nets' many small elementwise ops run much faster fused; `False` runs
            them as plain TensorFlow ops.
        **kwargs: the base `keras.optimizers.Optimizer` arguments (`clipnorm`, `use_ema`,
            `weight_decay`...). `weight_decay` is decoupled, as in `keras.optimizers.AdamW`:
            each step first multiplies a variable by `1 - learning_rate * weight_decay *
            rate`, `rate` being the net's nominal step size (`Net.decay_rate`; for the
            default, Adam's 1e-3 times its decay in time), so `weight_decay=0.004` shrinks
            weights as `AdamW()` does. Keras's own decay multiplies by `learning_rate` alone,
            which here is a factor of about 1: a thousand times AdamW's. Nets without a
            nominal step size (the paper's LSTMs) refuse it.

    Non-finite numbers: if a variable's gradient, the net's update, its new state or the new
    value of the variable has a NaN or Inf anywhere, that variable's step is skipped: the
    variable and its state keep their values. A model variable is never written a non-finite
    value by this optimizer.

    Sparse gradients (`tf.IndexedSlices`, from `Embedding`): the default (a net with
    `lazy_rows`) moves only the rows the batch holds, as TF1's `LazyAdam` did; a decoupled
    `weight_decay` still shrinks the others. Other nets get the gradient dense: rows with no
    gradient that step see a zero gradient, and the net may still move them, as Keras's
    `Adam` does.
    """

    def __init__(
        self,
        nets=None,
        net_assignments=None,
        learning_rate=1.0,
        seed=None,
        jit_compile=True,
        name="learned_optimizer",
        **kwargs,
    ):
        _require_tensorflow_backend()
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        _warn_if_small_factor(learning_rate)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.jit_compile = bool(jit_compile)
        if nets is None:
            nets = networks.load_nets(presets.pretrained_path(presets.DEFAULT_PRETRAINED))
        self.nets = networks.build_nets(nets)
        self.net_assignments = networks.check_assignments(self.nets, net_assignments)
        self.seed = seed
        self.net_weights = {}
        for net_name, net in self.nets.items():
            self.net_weights[net_name] = {}
            for module, fields in net.initial_weights(seed).items():
                self.net_weights[net_name][module] = {}
                for field, value in fields.items():
                    variable = self.add_variable(
                        value.shape, dtype="float32", name=f"{net_name}.{module}.{field}"
                    )
                    variable.assign(value)
                    self.net_weights[net_name][module][field] = variable
        if self.weight_decay is not None:
            for net_name, net in self.nets.items():
                if net.decay_rate(net.initial_state((1,))) is None:
                    raise ValueError(
                        f"weight_decay needs a nominal step size to scale it, and net "
                        f"{net_name!r} ({type(net).__name__}) learns its steps outright: leave "
                        "weight_decay out, or regularise the model's layers instead (e.g. "
                        "kernel_regularizer=keras.regularizers.L2(...))."
                    )
        self._pending_values = {}
        # Each net's step without its restart rule, which `update_step` applies after it
        # (`Net.without_restart` says why).
        self._learned_updates = {
            net_name: (compiled_learned_update(net.without_restart()) if self.jit_compile
                       else functools.partial(learned_update, net.without_restart()))
            for net_name, net in self.nets.items()}

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        """Loads a shipped optimizer by name or saved nets by path.

        Shipped (`presets.pretrained_names()`, each with a PROVENANCE.md in
        `l2l_tf/pretrained/`): "mnist-keras" (the default, for `model.fit` over epochs),
        "mnist" (the paper's optimizer and constants), "mnist-wide" (the paper's, with a wider
        gradient preprocessing), "mnist-family" (the paper's, for ReLU networks too) and
        "quadratic".

        A path is one net file (the net is named after the file) or a directory of
        `<net_name>.npz` files, as `train.py` and `MetaOptimizer.save` write; several nets need
        `net_assignments` in `kwargs`.
        """
        return cls(nets=networks.load_nets(presets.pretrained_path(name_or_path)), **kwargs)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallFactorWarning)
            return super().from_config(config, custom_objects)

    def build(self, variables):
        if self.built:
            return
        for variable in variables:
            if not keras.backend.is_float_dtype(variable.dtype):
                raise ValueError(
                    f"LearnedOptimizer updates floating-point variables, but {variable.path!r} "
                    f"is {variable.dtype}: make it a float variable or leave it out of training."
                )
        # Keras builds the optimizer while tracing the first train step. Variables created
        # there get an initialiser lifted out of the function, at ~9 ms each; created
        # eagerly they cost ~0.7 ms (MobileNetV2's 1,580 state slots: 14 s vs 1.2 s).
        with tf.init_scope():
            super().build(variables)
            self.variable_nets = [networks.net_for(v.path, self.nets, self.net_assignments)
                                  for v in variables]
            self.states = [self._add_state(v, net) for v, net in zip(variables, self.variable_nets)]
            # Written by `apply`, in each replica's context under tf.distribute; every replica
            # reads the same states and computes the same value, which "only_first_replica"
            # (the aggregation of Keras's own step count) says.
            self.pooled_readings = {
                net_name: self.add_variable(net.pooled_shape(), dtype="float32",
                                            aggregation="only_first_replica",
                                            name=f"{net_name}.pooled")
                for net_name, net in self.nets.items() if net.pooled_shape() is not None}
            self._assign_pending_values()

    def _add_state(self, variable, net_name):
        """One slot per entry of the net's state for `variable`, placed with it."""
        slot_prefix = variable.path.replace("/", "_")
        with self._distribution_strategy.extended.colocate_vars_with(_tf_variable(variable)):
            return [self.add_variable(shape, dtype="float32", name=f"{slot_prefix}_state{i}")
                    for i, shape in enumerate(self.nets[net_name].state_shapes(variable.shape))]

    def apply(self, grads, trainable_variables=None):
        """Keras's `apply`, after reading each pooling net's reading (`Net.pooled`) from the
        states of the variables it steps now, before any of them steps."""
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            self.build(trainable_variables)  # as Keras's `apply` would: before the reading
        if getattr(self, "pooled_readings", None):
            variables = (self._trainable_variables if trainable_variables is None
                         else trainable_variables)
            stepped = [self._get_variable_index(v) for g, v in zip(grads, variables)
                       if g is not None]
            for net_name, reading in self.pooled_readings.items():
                reading.assign(self.nets[net_name].pooled([
                    [tf.convert_to_tensor(s) for s in self.states[i]]
                    for i in stepped if self.variable_nets[i] == net_name]))
        return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        net_name = self.variable_nets[index]
        state_variables = self.states[index]
        gradient, held = networks.dense_gradient(self.nets[net_name], gradient, variable.shape)
        if not gradient.shape.is_fully_defined():
            # The nets read static shapes (a kernel's fan-in): a Dense kernel applied to
            # [batch, time, features] inputs gets a [None, units] gradient in a train step
            # traced for a partial last batch. Checked while tracing, so other steps pay nothing.
            gradient = tf.ensure_shape(gradient, variable.shape)
        weight_decay = None  # also for excluded variables: no decay work in their update
        if self.weight_decay is not None and self._use_weight_decay(variable):
            weight_decay = tf.constant(self.weight_decay, tf.float32)
        pooled = (tf.convert_to_tensor(self.pooled_readings[net_name])
                  if net_name in self.pooled_readings else None)
        new_value, new_state = self._learned_updates[net_name](
            tf.nest.map_structure(tf.convert_to_tensor, self.net_weights[net_name]),
            gradient,
            tuple(tf.convert_to_tensor(s) for s in state_variables),
            tf.convert_to_tensor(variable),
            tf.cast(learning_rate, tf.float32),
            weight_decay,
            pooled,
            held,
        )
        new_state = self.nets[net_name].restarted(new_state, pooled)

        # Non-finite steps were undone inside the compiled update (a select there costs no
        # measurable time); a `tf.cond` here took ~23 ms per variable to trace.
        self.assign(variable, new_value)
        for state_variable, value in zip(state_variables, new_state):
            self.assign(state_variable, value)

    def _apply_weight_decay(self, variables):
        """Nothing: `update_step` applies the weight decay, scaled by the net's nominal step
        size, which Keras's decay before the step cannot see."""

    def net_weight_values(self):
        """`{net_name: {module: {field: np.ndarray}}}`: the nets' current weights."""
        return {
            net_name: {m: {f: v.numpy() for f, v in fields.items()} for m, fields in weights.items()}
            for net_name, weights in self.net_weights.items()
        }

    def save_nets(self, directory):
        """Writes one file per net, `<directory>/<net_name>.npz` (see `networks.save_weights`)."""
        os.makedirs(directory, exist_ok=True)
        for net_name, weights in self.net_weight_values().items():
            networks.save_weights(
                os.path.join(directory, f"{net_name}.npz"), self.nets[net_name], weights
            )

    def get_config(self):
        config = super().get_config()
        weights = self.net_weight_values()
        config.update(
            {
                "nets": {
                    net_name: {
                        "net": type(net).__name__,
                        "net_options": {
                            **net.get_config(),
                            **({"initializer": _to_lists(weights[net_name])} if weights[net_name] else {}),
                        },
                    }
                    for net_name, net in self.nets.items()
                },
                "net_assignments": (
                    None
                    if self.net_assignments is None
                    else [[name, list(patterns)] for name, patterns in self.net_assignments]
                ),
                "seed": self.seed,
                "jit_compile": self.jit_compile,
            }
        )
        return config

    # Saving: every variable is stored under a name, not by position, so that a model saved
    # before the optimizer was built, or loaded before it is built, loses nothing.

    def _named_variables(self):
        own = {}
        for net_name, weights in self.net_weights.items():
            for module, fields in weights.items():
                for field, variable in fields.items():
                    own[f"net.{net_name}.{module}.{field}"] = variable
        for index, state in enumerate(getattr(self, "states", [])):
            for i, variable in enumerate(state):
                own[f"state.{index}.{i}"] = variable
        for net_name, variable in getattr(self, "pooled_readings", {}).items():
            own[f"pooled.{net_name}"] = variable
        own_ids = {id(v) for v in own.values()}
        base = [v for v in self.variables if id(v) not in own_ids]
        return {**{f"base.{i}": v for i, v in enumerate(base)}, **own}

    def save_own_variables(self, store):
        for key, variable in self._named_variables().items():
            store[key] = variable.numpy()

    def load_own_variables(self, store):
        self._pending_values.update({key: np.asarray(store[key]) for key in store.keys()})
        self._assign_pending_values()

    def _assign_pending_values(self):
        named = self._named_variables()
        for key in [k for k in self._pending_values if k in named]:
            value = self._pending_values.pop(key)
            if tuple(value.shape) != tuple(named[key].shape):
                raise ValueError(
                    f"Saved optimizer variable {key!r} has shape {value.shape}, but this "
                    f"optimizer's has {tuple(named[key].shape)}: load it into the same model "
                    "and the same nets it was saved with."
                )
            named[key].assign(value)
        if self.built and self._pending_values:
            warnings.warn(
                f"{self.name}: saved variables {sorted(self._pending_values)} have no "
                "counterpart in this optimizer (a different model or options?) and were "
                "not loaded."
            )
            self._pending_values = {}


def _warn_if_small_factor(learning_rate):
    """Warns if `learning_rate` (a number, or a schedule's value at step 0) is a factor
    below `SMALLEST_UNWARNED_FACTOR`: most likely Adam's rate written by habit."""
    first = learning_rate
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        first = learning_rate(0)
    try:
        first = float(first)
    except (TypeError, ValueError):  # a callable, or a value the base class will refuse
        return
    if 0 < first < SMALLEST_UNWARNED_FACTOR:
        warnings.warn(
            f"LearnedOptimizer(learning_rate={first:g}): learning_rate is a factor on the "
            f"learned step (1.0 = as trained), not Adam's rate, so every step is "
            f"{1 / first:,.0f}x smaller than the trained one. The default at 1.0 steps "
            f"kernels at about 3.5x Adam()'s pace; Adam(learning_rate={first:g})'s pace is "
            f"about learning_rate={first / DEFAULT_KERNEL_STEP:.2g}. If the small factor is meant, "
            "silence this with warnings.filterwarnings('ignore', "
            "category=l2l_tf.optimizer.SmallFactorWarning).",
            SmallFactorWarning,
            stacklevel=3,
        )


def learned_update(net, weights, gradient, state, value, learning_rate, weight_decay=None,
                   pooled=None, held=None):
    """One variable's learned step: `(new_value, new_state)`.

    `new_value = value + learning_rate * update` in float32, cast back to the variable's
    dtype. If the gradient, that new value or the new state has a NaN or Inf anywhere, the
    step is skipped: `value` and `state` are returned unchanged. A pure function of tensors,
    which `LearnedOptimizer` compiles with XLA. `weight_decay` (a float32 scalar, or None)
    first shrinks the value as AdamW does, by `learning_rate * weight_decay *
    net.decay_rate(state)`, and `net.decayed` tells the new state of that pull. `pooled` is
    the net's pooled reading, for a net with one; `held` the rows a sparse gradient holds,
    for a net with `lazy_rows` (`networks.dense_gradient`).
    """
    gradient = tf.cast(gradient, tf.float32)
    old_value = tf.cast(value, tf.float32)
    if weight_decay is not None:
        rate = net.decay_rate(state)
        pull = -weight_decay * rate * old_value  # in the units of the net's update
        old_value -= learning_rate * weight_decay * rate * old_value
    update, new_state = networks.call_step(net, weights, gradient, state, pooled, held)
    if weight_decay is not None:
        new_state = net.decayed(new_state, pull)
    new_value = tf.cast(old_value + learning_rate * update, value.dtype)
    finite = tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(t)) for t in (gradient, new_value, *new_state)])
    keep = lambda new, old: tf.where(finite, new, old)
    return keep(new_value, value), tuple(map(keep, new_state, state))


_COMPILED_LEARNED_UPDATES = {}


def compiled_learned_update(net):
    """`learned_update` for `net` as one XLA-compiled function per net class and options,
    shared by every optimizer in the process. Its traces and compiled programs (0.5-1 s per
    variable shape) are then made once: a second model, or the same model fit again with a
    fresh optimizer, starts at once. Sharing is sound because the function reads the net's
    options only; the weights, state and value come in as arguments. A net of one's own
    without `get_config` shares its function only with itself."""
    try:
        key = (type(net), json.dumps(net.get_config(), sort_keys=True, default=repr))
    except NotImplementedError:
        key = (type(net), id(net))
    if key not in _COMPILED_LEARNED_UPDATES:
        _COMPILED_LEARNED_UPDATES[key] = tf.function(functools.partial(learned_update, net),
                                                     jit_compile=True)
    return _COMPILED_LEARNED_UPDATES[key]


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _to_lists(weights):
    return {m: {f: v.tolist() for f, v in fields.items()} for m, fields in weights.items()}
