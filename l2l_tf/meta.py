"""Meta-training: learning the nets' weights by unrolling the optimizee (paper, sec. 2).

TF2 counterpart of the original `meta.py`. The optimizee's parameters are plain tensors; one
unroll is a `tf.function` that runs `unroll_length` optimizee steps under a `tf.GradientTape`
over the nets' weights. Each step takes the optimizee gradient (under `tf.stop_gradient`
unless `second_derivatives`), runs the net's pure `step` (the same function
`LearnedOptimizer.update_step` calls) and adds the update. Between unrolls the parameters and
net states carry over with the gradient cut (truncated backpropagation through time).

Meta-loss (eq. 3): L(phi) = sum_{t=1..T} w_t f(theta_t), with w_t = 1 by default. The original
also summed the t = 0 term f(theta_0), which has no gradient; it is left out here, so the
meta-gradient is the same and the reported meta-loss is the paper's. Beyond the paper,
`meta_objective="validation"` puts in place of f(theta_t) the loss of theta_t on a minibatch
of held-out examples (Metz et al. 2019): an optimizer that trains fast but overfits scores
worse.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from l2l_tf import networks, presets, problems


class MetaOptimizer:
    """Holds the nets and their weights, and trains them on problems.

    `MetaOptimizer(**nets)` takes nets by name, as `networks.Net` objects or specs
    `{"net": class name, "net_options": {...}, "net_path": file}`; with none, the original's
    default coordinatewise LSTM. `seed` seeds the weights of nets not loaded from files.
    """

    def __init__(self, seed=None, **nets):
        self.nets = networks.build_nets(nets or presets.default_nets())
        self.weights = {
            net_name: tf.nest.map_structure(
                lambda value: tf.Variable(value, name="net_weight"), net.initial_weights(seed)
            )
            for net_name, net in self.nets.items()
        }
        self.meta_optimizer = None

    def trainable_weights(self, net_names=None):
        """The weight variables of `net_names` (default all nets), in a fixed order."""
        names = self.nets if net_names is None else net_names
        return [v for name in names for v in tf.nest.flatten(self.weights[name])]

    def meta_loss(self, problem, unroll_length, net_assignments=None, second_derivatives=False,
                  loss_weights=None, seed=0, jit_compile=False, recompute=False, samples=1,
                  log_loss=False, graph_loop=False, meta_objective="train"):
        """An evaluation run of `problem`: `reset()`, then `unroll()` repeatedly.

        `recompute=True` bounds meta-training memory: each step's net activations are
        recomputed in the backward pass instead of kept (about a third more compute).
        `samples` > 1 unrolls that many independent samples of the problem together (a
        meta-batch): the meta-loss is their mean, and elementwise nets step all of them in
        one call. `log_loss=True` sums w_t log f(theta_t) instead of w_t f(theta_t), so that
        late steps (small losses) and problems of any loss scale weigh as much as early ones.
        `graph_loop=True` runs the unroll's steps in a `tf.while_loop` instead of a Python
        loop: traced once whatever its length, for unrolls of thousands of steps (slower per
        step for short ones). `meta_objective="validation"` makes f(theta_t) in the meta-loss
        (and in the returned losses) the loss on the step's minibatch of the problem's
        `validation_batch`, examples the optimizee does not train on, instead of the loss
        on its training minibatch ("train", the paper's).
        A `problems.Family` gives a `FamilyMetaLoss`: one run per member, in turn.
        """
        args = (unroll_length, net_assignments, second_derivatives, loss_weights, seed,
                jit_compile, recompute, samples, log_loss, graph_loop, meta_objective)
        if isinstance(problem, problems.Family):
            return FamilyMetaLoss([
                MetaLoss(self, member, *args[:4], seed + _MEMBER_SEED_STRIDE * i, *args[5:])
                for i, member in enumerate(problem.members)])
        return MetaLoss(self, problem, *args)

    def meta_minimize(self, problem, unroll_length, learning_rate=0.01, net_assignments=None,
                      second_derivatives=False, loss_weights=None, seed=0, jit_compile=False,
                      recompute=False, samples=1, strategy=None, log_loss=False,
                      graph_loop=False, meta_objective="train"):
        """A training run: like `meta_loss`, and `step()` also takes an Adam step on the nets.

        The meta-optimizer is a Keras Adam (epsilon 1e-8 as TF1's) shared by every run made
        from this `MetaOptimizer`, so its slots survive resets. With a `tf.distribute`
        `strategy` every replica unrolls its own samples (see `ReplicatedMetaLoss`): build
        the `MetaOptimizer` inside `strategy.scope()` and call this outside it.
        """
        if strategy is not None:
            if tf.distribute.has_strategy():
                raise ValueError(
                    "Call meta_minimize(strategy=...) outside strategy.scope(): each replica's "
                    "run must keep its own, unmirrored variables."
                )
            if not all(strategy.extended.variable_created_in_scope(v)
                       for v in self.trainable_weights()):
                raise ValueError(
                    "The nets' weights are not mirrored: create the MetaOptimizer inside "
                    "strategy.scope()."
                )
        if self.meta_optimizer is None:
            with (strategy or tf.distribute.get_strategy()).scope():
                self.meta_optimizer = keras.optimizers.Adam(learning_rate, epsilon=1e-8)
                self.meta_optimizer.build(self.trainable_weights())
        if strategy is not None:
            if isinstance(problem, problems.Family):
                raise ValueError("Meta-training a problems.Family under a tf.distribute "
                                 "strategy is not supported: train it on one device.")
            return ReplicatedMetaLoss(self, strategy, problem, unroll_length, net_assignments,
                                      second_derivatives, loss_weights, seed, jit_compile,
                                      recompute, samples, log_loss, graph_loop, meta_objective)
        return self.meta_loss(problem, unroll_length, net_assignments, second_derivatives,
                              loss_weights, seed, jit_compile, recompute, samples, log_loss,
                              graph_loop, meta_objective)

    def save(self, path):
        """Writes one file per net, `<path>/<net_name>.npz`, loadable by `LearnedOptimizer`."""
        os.makedirs(path, exist_ok=True)
        for net_name, net in self.nets.items():
            networks.save_weights(os.path.join(path, f"{net_name}.npz"), net,
                                  self.weights[net_name])


def assign_params(nets, param_names, net_assignments):
    """Maps each net to the indices of the parameters it updates, in parameter order."""
    net_assignments = networks.check_assignments(nets, net_assignments)
    assignment = {}
    for index, param_name in enumerate(param_names):
        assignment.setdefault(networks.net_for(param_name, nets, net_assignments), []).append(index)
    return assignment


_SAMPLE_SEED_STRIDE = 1_000_003
_MEMBER_SEED_STRIDE = 10_007


@tf.custom_gradient
def _dense_backward(tensor):
    """`tensor`, whose gradient is made dense on the way back: `tf.recompute_grad` takes
    dense gradients only, and a parameter an `Embedding` reads gets a sparse one
    (`tf.IndexedSlices`) from the next step's loss."""
    return tf.identity(tensor), tf.convert_to_tensor


class MetaLoss:
    """One optimizee run of a problem under the nets: parameters, constants and net states.

    `reset()` re-samples the parameters and the problem's constants and zeroes the states;
    `unroll()` runs `unroll_length` steps and carries everything to the next unroll;
    `step()` does the same and takes a meta-optimizer step on the nets from that unroll,
    unless the meta-loss or the meta-gradient is not finite: then the step is skipped and
    counted in `skipped_steps`, and the nets and the meta-optimizer's slots are untouched.
    Both return `(meta_loss, losses)` where `losses[t]` is f(theta_t), t = 0..unroll_length
    (averaged over the samples).
    """

    def __init__(self, meta, problem, unroll_length, net_assignments, second_derivatives,
                 loss_weights, seed, jit_compile, recompute, samples, log_loss, graph_loop,
                 meta_objective):
        if int(unroll_length) != unroll_length or unroll_length < 1:
            raise ValueError(f"unroll_length must be a positive integer, got {unroll_length!r}.")
        self.meta = meta
        self.problem = problem
        self.unroll_length = int(unroll_length)
        self.second_derivatives = second_derivatives
        self.log_loss = bool(log_loss)
        self.graph_loop = bool(graph_loop)
        if meta_objective not in ("train", "validation"):
            raise ValueError(f"meta_objective must be 'train' or 'validation', got "
                             f"{meta_objective!r}.")
        if meta_objective == "validation" and problem.validation_batch is None:
            raise ValueError(f"meta_objective='validation' needs held-out examples, and problem "
                             f"{problem.name!r} has no validation_batch: build it with a "
                             "validation split (e.g. problems.mnist(validation_size=10000)).")
        self.validation = meta_objective == "validation"
        weights = [1.0] * self.unroll_length if loss_weights is None else list(loss_weights)
        if len(weights) != self.unroll_length:
            raise ValueError(
                f"loss_weights has {len(weights)} entries; it needs one per step of the "
                f"unroll ({self.unroll_length})."
            )
        self.loss_weights = tf.constant(weights, tf.float32)
        if int(samples) != samples or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}.")
        self.samples = int(samples)
        # Parameters of all samples in one list, sample-major: index s * P + i.
        num_params = len(problem.params)
        self.shapes = [p.shape for p in problem.params] * self.samples
        self.assignment = {
            net_name: [s * num_params + i for s in range(self.samples) for i in indices]
            for net_name, indices in assign_params(meta.nets, problem.param_names,
                                                   net_assignments).items()
        }
        self.parameter_nets = {i: net_name for net_name, indices in self.assignment.items()
                               for i in indices}
        # One generator per sample, so sample s sees the same problems whatever `samples` is.
        self.rngs = [tf.random.Generator.from_seed(seed + _SAMPLE_SEED_STRIDE * s)
                     for s in range(self.samples)]
        self.x = [tf.Variable(tf.zeros(shape), trainable=False, name="x") for shape in self.shapes]
        self.constants = [
            {name: tf.Variable(value, trainable=False, name="constant")
             for name, value in problem.sample_constants(rng).items()}
            for rng in self.rngs
        ]
        self.states = {
            net_name: tf.nest.map_structure(
                lambda s: tf.Variable(s, trainable=False, name="state"), self._initial_state(net_name)
            )
            for net_name in self.assignment
        }
        self.trained_weights = meta.trainable_weights(list(self.assignment))
        self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
        self._net_updates = self._recomputed_updates if recompute else self.updates
        self._unroll = tf.function(self._run_unroll, jit_compile=jit_compile)
        self._reset = tf.function(self._run_reset)
        self.reset()

    def _initial_state(self, net_name):
        """Elementwise nets step all their parameters as one flat vector; others one by one."""
        net = self.meta.nets[net_name]
        shapes = [self.shapes[i] for i in self.assignment[net_name]]
        if net.elementwise:
            total = sum(networks.num_elements(s) for s in shapes)
            return net.initial_state((total,))
        return [net.initial_state(s) for s in shapes]

    def _run_reset(self):
        for s, rng in enumerate(self.rngs):
            for variable, value in zip(self._sample(self.x, s), self.problem.init_params(rng)):
                variable.assign(value)
            for name, value in self.problem.sample_constants(rng).items():
                self.constants[s][name].assign(value)
        for net_name in self.assignment:
            tf.nest.map_structure(lambda v, s: v.assign(s), self.states[net_name],
                                  self._initial_state(net_name))

    def reset(self):
        self._reset()

    def updates(self, weights, gradients, states):
        """The nets' updates for all parameters: `(updates, new_states)`. A sparse gradient
        (an `Embedding`'s, in a Keras model's problem) is made dense as `LearnedOptimizer`
        makes it (`networks.dense_gradient`)."""
        return self._updates(weights, *self._dense_gradients(gradients), states)

    def _dense_gradients(self, gradients):
        """`(dense gradients, {index: held})`, `held` for the sparse gradients of nets with
        `lazy_rows` (`networks.dense_gradient`)."""
        dense, held = [], {}
        for i, gradient in enumerate(gradients):
            gradient, rows = networks.dense_gradient(
                self.meta.nets[self.parameter_nets[i]], gradient, self.shapes[i])
            dense.append(gradient)
            if rows is not None:
                held[i] = rows
        return dense, held

    def _updates(self, weights, gradients, held, states):
        """`updates` of dense gradients, `held` as `_dense_gradients` gives it."""
        updates = [None] * len(gradients)
        new_states = {}
        for net_name, indices in self.assignment.items():
            net, net_weights = self.meta.nets[net_name], weights[net_name]
            if net.elementwise:
                flat = tf.concat([tf.reshape(gradients[i], [-1]) for i in indices], 0)
                flat_update, new_states[net_name] = net.step(net_weights, flat, states[net_name])
                sizes = [networks.num_elements(self.shapes[i]) for i in indices]
                for i, part in zip(indices, tf.split(flat_update, sizes)):
                    updates[i] = tf.reshape(part, self.shapes[i])
            else:
                # A net that pools a reading over its tensors reads it before any steps.
                pooled = (None if net.pooled_shape() is None
                          else net.pooled(states[net_name]))
                new_states[net_name] = []
                for i, state in zip(indices, states[net_name]):
                    updates[i], new_state = networks.call_step(
                        net, net_weights, gradients[i], state, pooled, held.get(i))
                    new_states[net_name].append(new_state)
        return updates, new_states

    def _recomputed_updates(self, weights, gradients, states):
        """`updates` under `tf.recompute_grad`: the nets' activations (nearly all of the
        unroll's memory) are not kept for the backward pass but computed again there."""
        structure = (weights, *self._dense_gradients(gradients), states)

        @tf.recompute_grad
        def flat_updates(*flat):
            updates, new_states = self._updates(*tf.nest.pack_sequence_as(structure, list(flat)))
            return tf.nest.flatten((updates, new_states))

        flat_out = [_dense_backward(t) for t in flat_updates(*tf.nest.flatten(structure))]
        return tf.nest.pack_sequence_as((gradients, states), flat_out)

    def read_weights(self):
        """The trained nets' weights as tensors in plain dicts, `{net: {module: {field}}}`
        (a checkpoint wraps the variables' dicts in types `tf.function` cannot trace)."""
        return {
            name: {module: {field: v.read_value() for field, v in fields.items()}
                   for module, fields in self.meta.weights[name].items()}
            for name in self.assignment
        }

    def read_inputs(self):
        """What the next unroll starts from, as tensors: `(parameters, constants, net states,
        batches)`. The unroll's minibatches (steps 0..unroll_length of every sample, stacked;
        with the validation objective, each step's `(training, validation)` pair) are drawn
        here, so that `forward` reads no data variables and no generators."""
        x, constants, states = tf.nest.map_structure(
            lambda v: v.read_value(), (self.x, self.constants, self.states))

        def step_batch(rng):
            batch = self.problem.sample_batch(rng)
            return (batch, self.problem.validation_batch(rng)) if self.validation else batch

        batches = [
            tf.nest.map_structure(lambda *steps: tf.stack(steps), *[
                step_batch(rng) for _ in range(self.unroll_length + 1)])
            for rng in self.rngs
        ]
        return x, constants, states, batches

    def write_state(self, x, states):
        """Carries parameters and net states to the next unroll (the truncation of BPTT)."""
        for variable, value in zip(self.x, x):
            variable.assign(value)
        tf.nest.map_structure(lambda v, s: v.assign(s), self.states, states)

    def forward(self, weights, x, constants, states, batches):
        """One unroll from `x` and `states` (see `read_inputs`): `(meta_loss, losses, x,
        states)`. A pure function of its arguments, differentiable with respect to `weights`;
        the caller holds the tape.
        """
        def loss(x_s, s, t, validation=False):
            """Sample s's loss at step t, on its training or validation batch of that step."""
            batch = tf.nest.map_structure(lambda steps: steps[t], batches[s])
            if self.validation:
                batch = batch[1] if validation else batch[0]
            return self.problem.loss(x_s, constants[s], batch)

        def step(t, x, states):
            """Optimizee step t of every sample: `(objectives [samples], x, states)`."""
            gradients, step_losses = [], []
            for s in range(self.samples):
                x_s = self._sample(x, s)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x_s)
                    step_loss = loss(x_s, s, t)
                gradients += tape.gradient(step_loss, x_s)
                step_losses.append(loss(x_s, s, t, validation=True) if self.validation
                                   else step_loss)
            if not self.second_derivatives:
                gradients = [tf.IndexedSlices(tf.stop_gradient(g.values), g.indices, g.dense_shape)
                             if isinstance(g, tf.IndexedSlices) else tf.stop_gradient(g)
                             for g in gradients]
            updates, states = self._net_updates(weights, gradients, states)
            return tf.stack(step_losses), [xi + ui for xi, ui in zip(x, updates)], states

        if self.graph_loop:
            def body(t, x, states, losses):
                step_losses, x, states = step(t, x, states)
                return t + 1, x, states, losses.write(t, step_losses)

            losses = tf.TensorArray(tf.float32, size=self.unroll_length)
            _, x, states, losses = tf.while_loop(
                lambda t, *_: t < self.unroll_length, body, (tf.constant(0), x, states, losses),
                maximum_iterations=self.unroll_length)
            losses = losses.stack()  # [step, sample]
        else:
            losses = []
            for t in range(self.unroll_length):
                step_losses, x, states = step(t, x, states)
                losses.append(step_losses)
            losses = tf.stack(losses)
        final = tf.stack([loss(self._sample(x, s), s, self.unroll_length, self.validation)
                          for s in range(self.samples)])
        losses = tf.reduce_mean(tf.concat([losses, final[None]], 0), axis=1)  # mean over samples
        terms = tf.math.log(losses[1:]) if self.log_loss else losses[1:]
        meta_loss = tf.reduce_sum(self.loss_weights * terms)
        return meta_loss, losses, x, states

    def apply_meta_gradients(self, meta_loss, meta_gradients):
        """The meta-optimizer's step, skipped and counted if anything is not finite."""
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                for g in [meta_loss, *meta_gradients]])

        def apply_meta_step():
            self.meta.meta_optimizer.apply_gradients(zip(meta_gradients, self.trained_weights))
            return tf.constant(0, tf.int64)

        # A non-finite meta-step would poison the nets and Adam's slots: skip and count it.
        self.skipped_steps.assign_add(
            tf.cond(finite, apply_meta_step, lambda: tf.constant(1, tf.int64)))

    def _run_unroll(self, train):
        meta_loss, losses, meta_gradients, x, states = self.forward_backward(
            self.read_weights(), *self.read_inputs(), train=train)
        if train:
            self.apply_meta_gradients(meta_loss, meta_gradients)
        self.write_state(x, states)
        return meta_loss, losses

    def forward_backward(self, weights, x, constants, states, batches, train):
        """`forward` and, if `train`, the meta-gradient with respect to `weights` (flat, in
        `trained_weights`' order): `(meta_loss, losses, meta_gradients, x, states)`. Pure:
        the one function every replica of a distributed meta-step runs."""
        if not train:  # evaluation: no tape, so no activations are kept for a backward pass
            meta_loss, losses, x, states = self.forward(weights, x, constants, states, batches)
            return meta_loss, losses, [], x, states
        # The order of `trained_weights`: net by net as assigned (not tf.nest's sorted keys).
        flat_weights = [w for name in self.assignment for w in tf.nest.flatten(weights[name])]
        with tf.GradientTape(watch_accessed_variables=False) as meta_tape:
            meta_tape.watch(flat_weights)
            meta_loss, losses, x, states = self.forward(weights, x, constants, states, batches)
        return meta_loss, losses, meta_tape.gradient(meta_loss, flat_weights), x, states

    def _sample(self, values, s):
        """Sample s's slice of a sample-major list of parameters."""
        num_params = len(self.problem.params)
        return values[s * num_params:(s + 1) * num_params]

    def unroll(self):
        """Runs one unroll with the nets as they are (evaluation)."""
        return self._unroll(train=False)

    def step(self):
        """Runs one unroll and takes one meta-optimizer step on the nets it used."""
        if self.meta.meta_optimizer is None:
            raise ValueError("step() needs a meta-optimizer: make this run with meta_minimize.")
        return self._unroll(train=True)


def run_epoch(run, num_unrolls, train, after_unroll=None):
    """The original's epoch: `reset()`, then `num_unrolls` unrolls (with meta-steps if `train`).

    Returns the losses f(theta_t) for t = 0..num_unrolls * unroll_length. An unroll whose
    meta-loss is not finite ends the epoch (its meta-step was skipped, see `MetaLoss.step`);
    the curve is then padded with NaN and the next epoch re-samples the problem.
    `after_unroll(step)`, if given, is called after each finite unroll with the number of
    optimizee steps taken so far, when `run.x` holds the parameters at that step.
    """
    run.reset()
    curve = []
    for unroll in range(num_unrolls):
        meta_loss, losses = run.step() if train else run.unroll()
        curve.append(losses.numpy()[:-1])
        if not np.isfinite(meta_loss.numpy()):
            break
        if after_unroll is not None:
            after_unroll((unroll + 1) * run.unroll_length)
    curve.append(losses.numpy()[-1:])
    values = np.concatenate(curve)
    return np.pad(values, (0, num_unrolls * run.unroll_length + 1 - len(values)),
                  constant_values=np.nan)


class ReplicatedMetaLoss:
    """Meta-training under a `tf.distribute` strategy: one `MetaLoss` per local replica.

    Each replica unrolls its own samples of the problem (own initialisations, constants and
    batches: replica r's sample s is seeded as global sample r * samples + s, so R replicas of
    S samples see the problems one device with R * S samples sees). The meta-loss and
    meta-gradient are averaged over replicas with an all-reduce, and one meta-optimizer step
    (skipped if not finite) updates the nets, which the strategy keeps identical everywhere.
    Build the `MetaOptimizer` and its meta-optimizer inside `strategy.scope()`, and this
    outside it, so that the replicas' runs are plain variables on their own devices.

    The replicas run one pure function (`MetaLoss.forward_backward`, compiled with XLA if
    `jit_compile`) of the nets' weights and of inputs that each run reads beforehand and
    hands in with `experimental_distribute_values_from_function`; the results are written
    back to the runs afterwards. No replica touches another device's variables or needs a
    static replica id, as XLA and TPU replication require.
    """

    def __init__(self, meta, strategy, problem, unroll_length, net_assignments=None,
                 second_derivatives=False, loss_weights=None, seed=0, jit_compile=False,
                 recompute=False, samples=1, log_loss=False, graph_loop=False,
                 meta_objective="train"):
        self.strategy = strategy
        devices = strategy.extended.worker_devices
        # Replica ids are global across workers; this worker's first one:
        resolver = getattr(strategy, "cluster_resolver", None)
        self.first_replica = (getattr(resolver, "task_id", None) or 0) * len(devices)
        self.runs = []
        for local, device in enumerate(devices):
            with tf.device(device):
                self.runs.append(meta.meta_loss(
                    problem, unroll_length, net_assignments, second_derivatives, loss_weights,
                    seed=seed + _SAMPLE_SEED_STRIDE * samples * (self.first_replica + local),
                    recompute=recompute, samples=samples, log_loss=log_loss,
                    graph_loop=graph_loop, meta_objective=meta_objective))
        self.unroll_length = self.runs[0].unroll_length
        self.trained_weights = self.runs[0].trained_weights
        self.skipped_steps = self.runs[0].skipped_steps
        self.rngs = [rng for run in self.runs for rng in run.rngs]
        self._forward_backward = tf.function(self.runs[0].forward_backward,
                                             jit_compile=jit_compile)
        self._unroll = tf.function(self._run_unroll)
        self._reset = tf.function(self._run_reset)

    def _run_reset(self):
        for run in self.runs:
            run._run_reset()

    def reset(self):
        self._reset()

    def _run_unroll(self, train):
        inputs = self.strategy.experimental_distribute_values_from_function(
            lambda context: self.runs[
                context.replica_id_in_sync_group - self.first_replica].read_inputs())

        def replica_fn(inputs):
            meta_loss, losses, gradients, x, states = self._forward_backward(
                self.runs[0].read_weights(), *inputs, train=train)
            reduced = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MEAN, [meta_loss, losses, *gradients])
            return reduced, (x, states)

        reduced, carried = self.strategy.run(replica_fn, args=(inputs,))
        for run, (x, states) in zip(self.runs, self.strategy.experimental_local_results(carried)):
            run.write_state(x, states)
        meta_loss, losses, *gradients = [
            self.strategy.experimental_local_results(value)[0] for value in reduced]
        if train:
            self.runs[0].apply_meta_gradients(meta_loss, gradients)
        return meta_loss, losses

    def unroll(self):
        return self._unroll(train=False)

    def step(self):
        return self._unroll(train=True)


class FamilyMetaLoss:
    """Runs of the members of a `problems.Family`, used in turn: each `reset()` moves to the
    next member (round robin, the position checkpointed in `member`), and `unroll()` /
    `step()` run the current one. Member i is seeded `seed + 10007 i` (its own problems and
    batches); all share the nets and the meta-optimizer.
    """

    def __init__(self, runs):
        self.runs = runs
        self.unroll_length = runs[0].unroll_length
        self.member = tf.Variable(-1, dtype=tf.int64, trainable=False, name="member")
        self.rngs = [rng for run in runs for rng in run.rngs]
        self.skipped_steps = runs[0].skipped_steps  # one counter for the whole family
        for run in runs[1:]:
            run.skipped_steps = self.skipped_steps

    @property
    def current(self):
        return self.runs[int(self.member.numpy()) % len(self.runs)]

    def reset(self):
        self.member.assign_add(1)
        self.current.reset()

    def unroll(self):
        return self.current.unroll()

    def step(self):
        return self.current.step()
