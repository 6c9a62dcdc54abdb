"""The judge of real training: optimizers in plain `model.fit` on MNIST, scored on held-out data.

    python experiments/keras_fit.py --epochs=20 --report_epochs=5,20 \
        --output=experiments/results/keras_fit.md

What a Keras user asks of an optimizer: after `model.fit` for some epochs, how good is the model
on data it never trained on? Every model trains on the first 50,000 images of MNIST's train
split; the last 10,000 are a validation split, used only to choose the best constant rate of
Adam's grid (--adam_grid, the same budget for every model); the reported numbers are the loss
and accuracy on the 10,000 images of the test split. Each seed fixes the model's initial
weights, the shuffling and dropout, the same for every optimizer (the float arithmetic is not
always bit-identical between processes: BUILD_NOTES.md, "Session 9"; before session 17 the
run cache did not record the initial weights, and runs cached in different sessions could
start from different ones: "Session 17").

Models (`MODELS`): today's three (the paper's MLP with sigmoid and with ReLU, a small CNN) and
five that no optimizer of this package was meta-trained on: a deeper MLP with dropout, the
TensorFlow quickstart MLP, a CNN with batch normalisation, and two unlike anything in
meta-training: an LSTM classifier reading the image's 28 rows, and an autoencoder
(784-128-32-128-784, sigmoid output) whose loss is the mean squared error of its
reconstruction (no accuracy) and which still underfits after 20 epochs.
`EXTRA_MODELS`, run only when named in --models (some are slow on a CPU): keras.io's "simple
MNIST convnet", a 6 x 256 ReLU MLP, a one-block transformer over the image's rows, a
regression of the digit's value (a number, mean squared error; no accuracy), and five added
in session 13 to widen what "unseen" covers: a 2 x 256 GELU MLP, a tanh MLP, a 1024-unit
ReLU MLP, a small residual CNN with batch normalisation, and a bag-of-words model (an
`Embedding` of the positions of the lit pixels, averaged, as in Keras's text classifiers);
in session 14 a logistic regression (one `Dense` layer: convex, and still underfitting
after 5 epochs); and in session 17 the small CNN behind Keras's data augmentation layers
(random rotations and shifts, active in training only), which keeps a model underfitting
and its gradients noisy for many epochs, as harder data sets do; and in session 26 four
common Keras shapes no earlier model had: a bidirectional GRU over the rows, a text-style
1-D CNN over the rows (global max pooling, dropout), a CNN of depthwise-separable
convolutions (MobileNet's layer) and the quickstart MLP with an L2 penalty on its hidden
kernel (whose reported losses are the data's alone, without the penalty it trains on).

Data: --train_examples keeps only the first images of the training part, for the small-data
regime, where a model memorises its training set within fewer steps than the default's decays
count on (the README's "Small datasets" table trains on 5,000). --dataset trains on a data set
other than MNIST, one that scikit-learn ships or generates (no download; the `experiments`
extra installs it), for what no optimizer here was made on: the 8 x 8 digits, the breast
cancer, wine and diabetes tables (the last a regression), or two generated data sets of
MNIST's size (60,000 examples) and nothing else of it, drawn once (`GENERATED_DATASETS`):
`classification`, 40 Gaussian features for 10 classes (`make_classification`), and
`friedman1`, a nonlinear regression of 10 uniform features (`make_friedman1`). Their examples
are shuffled once (the same split for every seed), the last fifth is the test split, the fifth
before it validation, and the features (and the regression's target) are standardised with the
training examples' mean and deviation, as a user would; the models that read a 28 x 28 image
(`MNIST_MODELS`) are MNIST's alone, the dense ones take any width. --dataset=reviews (session
67) is a text classifier's data, generated here (experiments/reviews.py) since IMDB cannot be
downloaded: 31,250 reviews of up to 250 word ids from a 10,000-word vocabulary with Zipf's
frequencies, two classes, split as above and read by `TEXT_MODELS` alone (TensorFlow's "Basic
text classification" tutorial model: an `Embedding` of 16 per word, averaged, with dropout;
since session 68 keras.io's "Text classification from scratch" model: an `Embedding` of 128,
two strided `Conv1D`s, max pooling, with dropout; since session 71 keras.io's "Text
classification with Transformer": one transformer block over embeddings of 32, mean-pooled,
then a ReLU layer of 20 with dropout), whose embedding rows mostly get a gradient in few
steps. --label_noise gives a
fraction of the training and validation examples a wrong class, as labelling mistakes do in
real data sets (the test split keeps its true labels): a faster optimizer may fit the mistakes
sooner. --raw_pixels feeds MNIST's pixels as stored, 0-255, to every optimizer alike: the input
of a user who did not divide by 255 (or standardise), whose first layer then sees gradients and
activations 255 times larger. --unstandardised is its counterpart for scikit-learn's data: the
features (and a regression's target) as loaded or drawn, as a user who skips the scaling step
trains on them (the breast cancer table's features have deviations from 0.003 to 572, the
diabetes table's 0.05 each and a target of mean 152 and deviation 79, friedman1's target mean
14 and deviation 5). --pretrain_classes measures fine-tuning, the other common way
Keras users train: every model is first trained with Adam() on some digits (the same weights
for every optimizer of a seed), then gets a new last layer (its initial draw) and each
optimizer trains it on the other digits, with every layer trainable or (--fine_tune=head) only
the new one, as Keras's transfer-learning guide does first; validation and test hold only the
new digits. --fine_tune=continue measures a second task instead: each optimizer first trains
the model itself on those digits, then goes on to the others with the same optimizer (its
states and step count carried over) and the same last layer, as calling `fit` again on new data
does; --fine_tune=renew gives the second task a new optimizer of the same kind.

Optimizers: Adam at every rate of --adam_grid (Keras's default `Adam()`, rate 0.001, always
among them), and --optimizers, given as
`name@learning_rate[:cosine|:plateau][:weight_decay=VALUE]`: `name` is
`adam`, `default` (`LearnedOptimizer()`), a shipped learned optimizer
(`l2l_tf.presets.pretrained_names()`) or a directory of nets saved by train.py; cosine decays
the rate to 0 over the whole run; plateau is the README's advice for small data sets, Keras's
own `ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1)`, driven by hand after
each epoch (the runs fit one epoch per call, and the callback forgets its best loss at every
`fit`); weight_decay is the optimizer's own decoupled decay (Keras's `weight_decay`
argument: `AdamW` for adam, `LearnedOptimizer(weight_decay=...)`, README "Use it in Keras"),
which session 55 measured on small data sets, where it holds back the weights' growth once
the training set is fit. Adam at two or more rates with a schedule (and no weight decay)
also gets a "best Adam" column of its own, chosen on the validation split as the constant
one is. --default_nets makes `default` run other nets (a candidate default), so that every
table can be made with a candidate before it ships and found cached after.

--gradient_ratio also records, per epoch, the largest gradient RMS ratio a learned optimizer's
tensors reached (`TensorwiseLSTM.gradient_rms_ratio`), the quantity a `restart_ratio` reads:
one run of a net without a restart tells whether any threshold would have fired in it. A net
with a restart zeroes the ratio's averages as it restarts, so the ratio read after that step
is 1; the restarts themselves are counted beside it, per epoch.

Resumable: every finished run (model, optimizer, seed) is stored in `<output>_runs.json`, keyed
by everything its numbers depend on (the model's initial weights included), and a run found
there is not run again, so the same command continues where it was stopped (losing
at most the run in progress). Writes the tables to --output (.md), every epoch of every run to
a .csv beside it, and the test loss per epoch as a plot (.png; needs matplotlib, in the
`experiments` and `test` extras).
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import csv
import functools
import hashlib
import io
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from l2l_tf import LearnedOptimizer, cli, networks, presets, problems
import reviews

MODELS = ("mlp_sigmoid", "mlp_relu", "cnn", "mlp_dropout", "quickstart", "cnn_bn", "lstm_rows",
          "autoencoder")
EXTRA_MODELS = ("keras_cnn", "deep_mlp", "transformer", "regression", "mlp_gelu", "mlp_tanh",
                "wide_mlp", "resnet", "pixel_bag", "logistic", "cnn_augmented", "gru_rows",
                "conv1d_rows", "separable_cnn", "mlp_l2")
# Models of word ids (`TEXT_DATASETS`' reviews) and nothing else: TensorFlow's "Basic text
# classification" tutorial model, keras.io's "Text classification from scratch" 1-D CNN and
# its "Text classification with Transformer".
TEXT_MODELS = ("text_bag", "text_cnn", "text_transformer")
ALL_MODELS = MODELS + EXTRA_MODELS + TEXT_MODELS
TASKS = {"autoencoder": "reconstruct", "regression": "regress"}  # others: "classify"
# Models made for MNIST: they read a 28 x 28 image or its lit pixels, reconstruct pixels in
# [0, 1] (the autoencoder's sigmoid) or regress the digit's value.
MNIST_MODELS = ("cnn", "cnn_augmented", "cnn_bn", "lstm_rows", "keras_cnn", "transformer",
                "resnet", "pixel_bag", "autoencoder", "regression", "gru_rows", "conv1d_rows",
                "separable_cnn")
# scikit-learn's data sets, to be had offline: tables it ships (its `load_<name>`) and data it
# generates (its `make_<name>`, with `GENERATED_DATASETS`'s arguments), and the task each is.
SKLEARN_DATASETS = {"digits": "classify", "breast_cancer": "classify", "wine": "classify",
                    "diabetes": "regress", "classification": "classify", "friedman1": "regress"}
# MNIST's size, nothing else of it: 40 Gaussian features, 20 of them informative, for 10
# classes of 2 clusters each, 2% of the labels random; and Friedman's smooth nonlinear
# regression of 10 uniform features, 5 of them used, with noise.
GENERATED_DATASETS = {
    "classification": {"n_samples": 60000, "n_features": 40, "n_informative": 20,
                       "n_redundant": 10, "n_classes": 10, "n_clusters_per_class": 2,
                       "flip_y": 0.02},
    "friedman1": {"n_samples": 60000, "n_features": 10, "noise": 1.0},
}
# Data sets this repository generates (experiments/reviews.py), with their arguments: IMDB's
# 25,000 training reviews and a test fifth beside them, for a text classifier (`TEXT_MODELS`).
TEXT_DATASETS = {"reviews": {"n_samples": 31250}}
DATASET_TASKS = {**SKLEARN_DATASETS, **{name: "classify" for name in TEXT_DATASETS}}
# The one draw and shuffle of a data set other than MNIST (scikit-learn's, or generated
# reviews), whatever --seeds says. Cached runs are keyed by a data set's name: other
# arguments or another seed need another name.
SKLEARN_SPLIT_SEED = 0
LABEL_NOISE_SEED = 0  # the one draw of --label_noise's wrong labels, whatever --seeds says
DEFAULT_ADAM_RATE = 0.001  # keras.optimizers.Adam()
DEFAULT_ADAM = ("adam", DEFAULT_ADAM_RATE, "constant")  # its optimizer tuple (parse_optimizer)
SCHEDULES = ("cosine", "plateau")  # besides a constant rate; see the module docstring
L2_PENALTY = 1e-3  # mlp_l2's, that of TensorFlow's "Overfit and underfit" tutorial
PLATEAU = {"monitor": "val_loss", "factor": 0.3, "patience": 1}  # the README's advice
PRETRAINED_WEIGHTS = {}  # (model, seed): weights after --pretrain_classes, made once a process

flags.DEFINE_enum("dataset", "mnist", ["mnist", *DATASET_TASKS],
                  "MNIST (from TFDS_DATA_DIR), a data set scikit-learn ships or generates, or "
                  "generated reviews (see the module docstring).")
flags.DEFINE_list("models", list(MODELS), "Models to train, of "
                  f"{', '.join(ALL_MODELS)} (on a scikit-learn --dataset: those not in "
                  "MNIST_MODELS or TEXT_MODELS, by default the dense ones among the first "
                  "eight; on reviews: TEXT_MODELS).")
flags.DEFINE_list("optimizers", ["default@1"],
                  "Optimizers besides Adam's grid, as name@learning_rate[:cosine|:plateau] (see "
                  "the module docstring).")
flags.DEFINE_string("default_nets", None,
                    "What the name `default` runs, if not the shipped default: a shipped name or a "
                    "directory of nets saved by train.py. For making the tables of a candidate "
                    "default before it ships: runs are keyed by the nets' contents, so they are "
                    "found in the cache once the same file ships, and need not run again.")
flags.DEFINE_list("adam_grid", ["0.0003", "0.001", "0.003", "0.01", "0.03"],
                  "Constant learning rates of Adam; the best on the validation split is the "
                  "'best constant Adam' (0.001, Keras's default, is always run).")
flags.DEFINE_integer("epochs", 5, "Epochs of model.fit per run.", lower_bound=1)
flags.DEFINE_list("report_epochs", [], "Epochs to make tables for (default: the last).")
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every optimizer runs once per seed.")
flags.DEFINE_integer("validation_examples", None,
                     "Examples held out of the end of the train split for choosing Adam's rate "
                     "(default: 10,000 on MNIST, a quarter of the train split otherwise).",
                     lower_bound=1)
flags.DEFINE_integer("train_examples", 0, "Train on the first this many examples of the rest "
                     "(0: all of them, 50,000 on MNIST).", lower_bound=0)
flags.DEFINE_float("label_noise", 0.0, "Fraction of the training and validation examples whose "
                   "label is replaced by another class, drawn uniformly (the test split keeps "
                   "its true labels); classifiers only.", lower_bound=0.0, upper_bound=0.9)
flags.DEFINE_bool("raw_pixels", False,
                  "MNIST's pixels as stored, 0-255, instead of divided by 255: a user's input "
                  "left unscaled, the same for every optimizer. Not for the autoencoder, "
                  "whose sigmoid reconstructs pixels in [0, 1].")
flags.DEFINE_bool("unstandardised", False,
                  "A scikit-learn --dataset's features, and a regression's target, as loaded or "
                  "drawn instead of standardised: a user's data left unscaled, the same for "
                  "every optimizer; losses are then in the target's own units.")
flags.DEFINE_list("pretrain_classes", [],
                  "Fine-tuning (MNIST classifiers): every model is first trained with Adam() "
                  "for --pretrain_epochs on the training images of these digits, its last layer "
                  "is then drawn anew (a new head), and each optimizer trains it on the other "
                  "digits alone; validation and test hold only those too. With "
                  "--fine_tune=continue or renew each optimizer trains the model on these "
                  "digits itself and the last layer is kept (a second task).")
flags.DEFINE_integer("pretrain_epochs", 5, "Epochs on --pretrain_classes: of Adam() (--fine_tune "
                     "all, head) or of each optimizer itself (continue, renew).", lower_bound=1)
flags.DEFINE_enum("fine_tune", "all", ["all", "head", "continue", "renew"],
                  "With --pretrain_classes: train every layer, or only the new head with the "
                  "rest frozen (the first phase of Keras's transfer-learning guide); or "
                  "(continue) let each optimizer pretrain the model itself and go on to the "
                  "other digits with the same optimizer and last layer, a second task, or "
                  "(renew) the same with a new optimizer for the second task.")
flags.DEFINE_bool("gradient_ratio", False,
                  "Also record, per epoch, the largest gradient RMS ratio of the learned "
                  "optimizers (TensorwiseLSTM.gradient_rms_ratio over every tensor and step): a "
                  "restart_ratio R fires in a run of a net without one exactly where it "
                  "exceeds R; and how many times a net's own restart fired (which the ratio "
                  "cannot show: a restart zeroes it). Read after every step, which slows the "
                  "fit a little (the wall times include it).")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "model.compile's jit_compile; 'auto' is Keras's default (no XLA on CPU).")
flags.DEFINE_string("output", None, "Markdown file for the tables (.md); the .csv, the run "
                    "cache (_runs.json) and the plot (.png) go beside it.")
flags.DEFINE_bool("runs_only", False,
                  "Make the runs and add them to --output's run cache, and write no table: for "
                  "remaking a candidate default's runs (--default_nets) with a table's own "
                  "command before the candidate ships, while the table must go on showing the "
                  "shipped default. Once it ships, the same command without these two flags "
                  "finds the runs and writes the table. A run whose shipped twin is cached "
                  "only from another machine's initial weights is left to that machine.")
FLAGS = flags.FLAGS


def build_model(name, width=784, task=None, classes=10):
    """The model `name`, on flat inputs of `width` features (MNIST's 784 pixels in [0, 1] by
    default): logits of `classes` classes, or the inputs ("reconstruct") or one number
    ("regress"), for `task` (by default the model's task on MNIST, `TASKS`).

    Only the named model's layers are made: an unseeded Keras initializer draws its seed from
    Python's random state when its layer is made, so making other models' layers first would
    change this model's initial weights whenever a model is added here (what made runs cached
    before session 13 start from other weights than later runs of the same seed; "Session
    17" in BUILD_NOTES.md)."""
    dense = keras.layers.Dense

    def image():
        return [keras.layers.Reshape((28, 28, 1))]

    def small_cnn():
        return [keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                keras.layers.Flatten()]

    if name == "transformer":
        return transformer()
    if name == "resnet":
        return resnet()
    if name == "text_transformer":
        return text_transformer(width, classes)
    layers = {
        "mlp_sigmoid": lambda: [dense(20, activation="sigmoid")],
        "mlp_relu": lambda: [dense(20, activation="relu")],
        "cnn": lambda: image() + small_cnn(),
        "cnn_augmented": lambda: image() + [
            keras.layers.RandomRotation(0.05, fill_mode="constant"),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant")] + small_cnn(),
        "mlp_dropout": lambda: [dense(256, activation="relu"), keras.layers.Dropout(0.2),
                                dense(128, activation="relu"), keras.layers.Dropout(0.2)],
        "quickstart": lambda: [dense(128, activation="relu"), keras.layers.Dropout(0.2)],
        "cnn_bn": lambda: image() + [
            keras.layers.Conv2D(16, 3, use_bias=False), keras.layers.BatchNormalization(),
            keras.layers.ReLU(), keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, use_bias=False), keras.layers.BatchNormalization(),
            keras.layers.ReLU(), keras.layers.MaxPooling2D(2), keras.layers.Flatten()],
        "lstm_rows": lambda: [keras.layers.Reshape((28, 28)), keras.layers.LSTM(64)],
        "gru_rows": lambda: [keras.layers.Reshape((28, 28)),
                             keras.layers.Bidirectional(keras.layers.GRU(32))],
        "conv1d_rows": lambda: [
            keras.layers.Reshape((28, 28)), keras.layers.Conv1D(64, 5, activation="relu"),
            keras.layers.MaxPooling1D(2), keras.layers.Conv1D(64, 3, activation="relu"),
            keras.layers.GlobalMaxPooling1D(), dense(64, activation="relu"),
            keras.layers.Dropout(0.5)],
        "separable_cnn": lambda: image() + [
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.SeparableConv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(2),
            keras.layers.SeparableConv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D()],
        "autoencoder": lambda: [dense(128, activation="relu"), dense(32, activation="relu"),
                                dense(128, activation="relu")],
        "keras_cnn": lambda: image() + [
            keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(), keras.layers.Dropout(0.5)],
        "deep_mlp": lambda: [dense(256, activation="relu") for _ in range(6)],
        "regression": lambda: [dense(128, activation="relu")],
        "mlp_gelu": lambda: [dense(256, activation="gelu"), dense(256, activation="gelu")],
        "mlp_tanh": lambda: [dense(128, activation="tanh")],
        "wide_mlp": lambda: [dense(1024, activation="relu")],
        "mlp_l2": lambda: [dense(128, activation="relu",
                                 kernel_regularizer=keras.regularizers.L2(L2_PENALTY))],
        "logistic": lambda: [],
        "pixel_bag": lambda: [
            LitPixelPositions(), keras.layers.Embedding(785, 32, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(), dense(64, activation="relu")],
        "text_bag": lambda: [
            keras.layers.Embedding(reviews.VOCABULARY, 16), keras.layers.Dropout(0.2),
            keras.layers.GlobalAveragePooling1D(), keras.layers.Dropout(0.2)],
        "text_cnn": lambda: [
            keras.layers.Embedding(reviews.VOCABULARY, 128), keras.layers.Dropout(0.5),
            keras.layers.Conv1D(128, 7, activation="relu", strides=3),
            keras.layers.Conv1D(128, 7, activation="relu", strides=3),
            keras.layers.GlobalMaxPooling1D(), dense(128, activation="relu"),
            keras.layers.Dropout(0.5)],
    }[name]()
    task = task or TASKS.get(name, "classify")
    head = dense({"reconstruct": width, "regress": 1}.get(task, classes),
                 activation="sigmoid" if task == "reconstruct" else None)
    return keras.Sequential([keras.Input((width,)), *layers, head])


def transformer():
    """One post-norm transformer block over the image's 28 rows (28 tokens of 28 pixels, a
    learned position embedding, 4 heads of 16), mean-pooled into 10 logits."""
    layers = keras.layers
    inputs = keras.Input((784,))
    tokens = layers.Dense(64)(layers.Reshape((28, 28))(inputs))
    tokens = layers.Add()([tokens, PositionEmbedding()(tokens)])
    attended = layers.MultiHeadAttention(4, 16)(tokens, tokens)
    tokens = layers.LayerNormalization()(layers.Add()([tokens, attended]))
    mixed = layers.Dense(64)(layers.Dense(128, activation="gelu")(tokens))
    tokens = layers.LayerNormalization()(layers.Add()([tokens, mixed]))
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling1D()(tokens)))


def text_transformer(length, classes):
    """keras.io's "Text classification with Transformer" on `length` word ids: embeddings of
    32 plus a learned one per position, one post-norm transformer block (2 heads of 32, a
    ReLU feed-forward layer of 32, dropout 0.1), mean-pooled, then dropout, a ReLU layer of
    20 and dropout into `classes` logits. Its positions' vectors start at zero
    (`PositionEmbedding`), where keras.io draws them as an `Embedding`'s."""
    layers = keras.layers
    inputs = keras.Input((length,))
    tokens = layers.Embedding(reviews.VOCABULARY, 32)(inputs)
    tokens = layers.Add()([tokens, PositionEmbedding()(tokens)])
    attended = layers.Dropout(0.1)(layers.MultiHeadAttention(2, 32)(tokens, tokens))
    tokens = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([tokens, attended]))
    mixed = layers.Dropout(0.1)(layers.Dense(32)(layers.Dense(32, activation="relu")(tokens)))
    tokens = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([tokens, mixed]))
    pooled = layers.Dropout(0.1)(layers.GlobalAveragePooling1D()(tokens))
    hidden = layers.Dropout(0.1)(layers.Dense(20, activation="relu")(pooled))
    return keras.Model(inputs, layers.Dense(classes)(hidden))


def resnet():
    """A small residual CNN: a 16-filter stem, then two residual blocks (16 filters, then 32 at
    stride 2 with a 1 x 1 projection), each conv followed by batch normalisation; global
    average pooling into 10 logits."""
    layers = keras.layers

    def conv_bn(x, filters, strides=1):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        return layers.BatchNormalization()(x)

    inputs = keras.Input((784,))
    x = layers.ReLU()(conv_bn(layers.Reshape((28, 28, 1))(inputs), 16))
    for filters, strides in ((16, 1), (32, 2)):
        branch = conv_bn(layers.ReLU()(conv_bn(x, filters, strides)), filters)
        if strides != 1:
            x = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
        x = layers.ReLU()(layers.Add()([x, branch]))
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))


class LitPixelPositions(keras.layers.Layer):
    """Token ids for a bag of words: 1 + a pixel's position where it is above 0.5, else 0
    (padding, masked by the `Embedding` that follows)."""

    def call(self, inputs):
        positions = keras.ops.arange(1, inputs.shape[-1] + 1, dtype="int32")
        return keras.ops.where(inputs > 0.5, positions, keras.ops.zeros_like(positions))


class PositionEmbedding(keras.layers.Layer):
    """A learned vector per position, the shape of its [batch, positions, width] input."""

    def build(self, input_shape):
        self.embedding = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros",
                                         name="embedding")

    def call(self, inputs):
        return keras.ops.broadcast_to(self.embedding, keras.ops.shape(inputs))


def parse_optimizer(spec):
    """`(name, learning_rate, schedule)`, or `(name, learning_rate, schedule, weight_decay)`
    with a weight decay, from `name@learning_rate[:cosine|:plateau][:weight_decay=VALUE]`
    (three fields without one, so that the run caches' keys made before it stay valid)."""
    name, sep, rest = spec.rpartition("@")
    rate, *options = rest.split(":")
    schedule, weight_decay, valid = "constant", None, True
    for option in options:
        key, is_setting, value = option.partition("=")
        if option in SCHEDULES and schedule == "constant":
            schedule = option
        elif key == "weight_decay" and is_setting and weight_decay is None:
            weight_decay = positive_number(value)
            valid = valid and weight_decay is not None
        else:
            valid = False
    rate = positive_number(rate)
    if not (sep and name and rate and valid):
        raise cli.UsageError(
            f"optimizer {spec!r} is not name@learning_rate[:cosine|:plateau]"
            "[:weight_decay=VALUE] with a positive rate and decay, e.g. adam@0.001, "
            "default@0.3:cosine or default@1:weight_decay=1."
        )
    return (name, rate, schedule) + ((weight_decay,) if weight_decay else ())


def positive_number(text):
    """`float(text)` if it is a positive number, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 else None


def weight_decay_of(optimizer):
    """The weight decay of an optimizer's tuple (`parse_optimizer`), 0 without one."""
    return optimizer[3] if len(optimizer) > 3 else 0.0


def build_optimizer(optimizer, total_steps):
    """The Keras optimizer of a `parse_optimizer` tuple, for a run of `total_steps`."""
    name, rate, schedule = optimizer[:3]
    weight_decay = weight_decay_of(optimizer) or None  # None: Keras's own "no decay"
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, total_steps)
    if name == "adam":
        return (keras.optimizers.AdamW(rate, weight_decay=weight_decay) if weight_decay
                else keras.optimizers.Adam(rate))
    return LearnedOptimizer.from_pretrained(nets_of(name), learning_rate=rate,
                                            weight_decay=weight_decay)


def nets_of(name):
    """The shipped name or directory of nets that a learned optimizer's `name` runs
    (`default`: `LearnedOptimizer()`'s, `from_pretrained(DEFAULT_PRETRAINED)`, unless
    --default_nets names others)."""
    if name == "default":
        return FLAGS.default_nets or presets.DEFAULT_PRETRAINED
    return name


def label(optimizer):
    name, rate, schedule = optimizer[:3]
    weight_decay = weight_decay_of(optimizer)
    return (f"{name} {rate:g}" + ("" if schedule == "constant" else f", {schedule}")
            + (f", weight decay {weight_decay:g}" if weight_decay else ""))


def model_names():
    """--models; unless given, on a scikit-learn data set the dense ones among `MODELS`, on
    reviews `TEXT_MODELS`."""
    if FLAGS.dataset == "mnist" or FLAGS["models"].present:
        return FLAGS.models
    if FLAGS.dataset in TEXT_DATASETS:
        return list(TEXT_MODELS)
    return [name for name in MODELS if name not in MNIST_MODELS]


def models_for(dataset):
    """The models that read `dataset`: word ids for `TEXT_MODELS`, MNIST's images or targets
    for `MNIST_MODELS`, any features for the others."""
    if dataset in TEXT_DATASETS:
        return TEXT_MODELS
    return tuple(name for name in ALL_MODELS if name not in TEXT_MODELS
                 and (dataset == "mnist" or name not in MNIST_MODELS))


def check_flags():
    unknown = sorted(set(FLAGS.models) - set(ALL_MODELS))
    if unknown:
        raise cli.UsageError(f"unknown --models {unknown}: use some of "
                             f"{', '.join(ALL_MODELS)}.")
    if FLAGS.dataset in SKLEARN_DATASETS:
        cli.require("sklearn", "experiments", package="scikit-learn")
    unfit = [name for name in model_names() if name not in models_for(FLAGS.dataset)]
    if unfit:
        what = ("word ids" if FLAGS.dataset in TEXT_DATASETS else
                "images" if FLAGS.dataset == "mnist" else "features")
        raise cli.UsageError(
            f"--models={','.join(unfit)} are not made for the {what} of --dataset="
            f"{FLAGS.dataset}: use some of {', '.join(models_for(FLAGS.dataset))}.")
    if FLAGS.label_noise:
        require_classifiers("--label_noise", "relabels classes")
    if FLAGS.raw_pixels:
        check_raw_pixels_flags()
    if FLAGS.unstandardised and FLAGS.dataset not in SKLEARN_DATASETS:
        raise cli.UsageError(
            "--unstandardised leaves a scikit-learn --dataset's features unscaled, and "
            + ("MNIST's are pixels: use --raw_pixels for them 0-255, or give a --dataset."
               if FLAGS.dataset == "mnist" else f"{FLAGS.dataset} holds word ids, which are "
               "never scaled: drop --unstandardised."))
    if FLAGS.pretrain_classes:
        check_pretrain_flags()
    elif FLAGS["fine_tune"].present:
        raise cli.UsageError(f"--fine_tune={FLAGS.fine_tune} says how to train after "
                             "--pretrain_classes, which is not given: add it (e.g. "
                             "--pretrain_classes=0,1,2,3,4) or drop --fine_tune.")
    if FLAGS.output is not None and not FLAGS.output.endswith(".md"):
        raise cli.UsageError(f"--output={FLAGS.output!r} must end in .md.")
    if FLAGS.runs_only and FLAGS.output is None:
        raise cli.UsageError("--runs_only adds the runs to --output's run cache, and no "
                             "--output is given: name the table (e.g. its own .md).")
    try:
        seeds = [int(seed) for seed in FLAGS.seeds]
        report_epochs = [int(epoch) for epoch in FLAGS.report_epochs] or [FLAGS.epochs]
    except ValueError:
        raise cli.UsageError("--seeds and --report_epochs must be integers.") from None
    if not all(1 <= epoch <= FLAGS.epochs for epoch in report_epochs):
        raise cli.UsageError(f"--report_epochs={','.join(FLAGS.report_epochs)} must lie in "
                             f"1..--epochs={FLAGS.epochs}.")
    grid = sorted({parse_optimizer(f"adam@{rate}")[1] for rate in FLAGS.adam_grid}
                  | {DEFAULT_ADAM_RATE})
    optimizers = [("adam", rate, "constant") for rate in grid]
    optimizers += [o for o in map(parse_optimizer, FLAGS.optimizers) if o not in optimizers]
    if second_task() and any(optimizer[2] == "cosine" for optimizer in optimizers):
        raise cli.UsageError(f"--fine_tune={FLAGS.fine_tune} trains twice, and :cosine decays "
                             "the rate over one run: drop :cosine (or use --fine_tune=all).")
    for optimizer in optimizers:  # a wrong name fails now, not after an hour
        if optimizer[0] != "adam":
            with cli.configuration_errors():
                build_optimizer(optimizer, 1)
    return optimizers, seeds, report_epochs


def check_raw_pixels_flags():
    """Refuses --raw_pixels where there are no pixels or a model's target is the pixels."""
    if FLAGS.dataset != "mnist":
        raise cli.UsageError(f"--raw_pixels keeps MNIST's pixels 0-255, and --dataset="
                             f"{FLAGS.dataset} has no pixels: drop --raw_pixels (--unstandardised "
                             "leaves its features unscaled).")
    reconstruct = [name for name in model_names() if task_of(name, "mnist") == "reconstruct"]
    if reconstruct:
        raise cli.UsageError(f"--models={','.join(reconstruct)} reconstruct their input "
                             "through a sigmoid, in [0, 1], which 0-255 pixels are not: leave "
                             "them out or drop --raw_pixels.")


def check_pretrain_flags():
    """--pretrain_classes: some of MNIST's digits, not all, for classifiers, without
    --label_noise (whose wrong classes would mix the two tasks)."""
    if FLAGS.dataset != "mnist" or FLAGS.label_noise:
        raise cli.UsageError("--pretrain_classes fine-tunes on MNIST's other digits: drop "
                             "--dataset and --label_noise, or drop --pretrain_classes.")
    if not set(FLAGS.pretrain_classes) < set("0123456789"):
        raise cli.UsageError(f"--pretrain_classes={','.join(FLAGS.pretrain_classes)} must be "
                             "some of the digits 0-9, leaving at least one to fine-tune on, "
                             "e.g. --pretrain_classes=0,1,2,3,4.")
    require_classifiers("--pretrain_classes", "fine-tunes classifiers")


def non_classifiers():
    """The --models that do not classify on --dataset."""
    return [name for name in model_names() if task_of(name, FLAGS.dataset) != "classify"]


def require_classifiers(flag, what_it_does):
    """Refuses --models that do not classify (on --dataset) for `flag`, which `what_it_does`."""
    not_classifiers = non_classifiers()
    if not_classifiers:
        raise cli.UsageError(
            f"{flag} {what_it_does}, and --models={','.join(not_classifiers)} do not classify: "
            f"leave them out or drop {flag}.")


def fine_tune_classes():
    """(the digits pretrained on, the digits fine-tuned on), each sorted."""
    source = sorted({int(digit) for digit in FLAGS.pretrain_classes})
    return source, [digit for digit in range(10) if digit not in source]


def split_train_validation(images, labels, validation_examples, train_examples=0):
    """`problems.split_train_validation` of the train split for the flags: validation is its
    last examples, training its first (at most `train_examples` of them, 0: all)."""
    if validation_examples >= len(labels):
        raise cli.UsageError(f"--validation_examples={validation_examples} leaves nothing to "
                             f"train on among the {len(labels)} examples.")
    end = len(labels) - validation_examples
    return problems.split_train_validation(images, labels, validation_examples,
                                           min(train_examples, end) if train_examples else None)


@functools.cache
def dataset_splits(dataset):
    """`{"train", "test"}: (x float32, y)` of scikit-learn's `load_<dataset>` or (drawn with
    `SKLEARN_SPLIT_SEED`) `make_<dataset>` or `reviews.make_reviews`, shuffled once
    (`SKLEARN_SPLIT_SEED`), its last fifth the test split; y is int32, or float32 for a
    regression. Reviews' x holds word ids (exact in float32), which `Embedding` reads."""
    if dataset in TEXT_DATASETS:
        x, y = reviews.make_reviews(random_state=SKLEARN_SPLIT_SEED, **TEXT_DATASETS[dataset])
    else:
        from sklearn import datasets

        if dataset in GENERATED_DATASETS:
            x, y = getattr(datasets, f"make_{dataset}")(random_state=SKLEARN_SPLIT_SEED,
                                                        **GENERATED_DATASETS[dataset])
        else:
            x, y = getattr(datasets, f"load_{dataset}")(return_X_y=True)
    order = np.random.default_rng(SKLEARN_SPLIT_SEED).permutation(len(y))
    x = x[order].astype(np.float32)
    y = y[order].astype(np.float32 if DATASET_TASKS[dataset] == "regress" else np.int32)
    end = len(y) - len(y) // 5
    return {"train": (x[:end], y[:end]), "test": (x[end:], y[end:])}


def validation_size():
    """--validation_examples, or its default: 10,000 on MNIST, a quarter of another data
    set's train split."""
    if FLAGS.validation_examples:
        return FLAGS.validation_examples
    if FLAGS.dataset == "mnist":
        return 10000
    return len(dataset_splits(FLAGS.dataset)["train"][1]) // 4


def load_data():
    """`{"train", "validation", "test"}: (x [n, width] float32, y)`: MNIST's pixels in [0, 1]
    (0-255 with --raw_pixels), a scikit-learn data set's features (and a regression's
    target) standardised with the training examples' mean and deviation (not with
    --unstandardised, as loaded or drawn), or reviews' word ids."""
    if FLAGS.dataset == "mnist":
        arrays = {}
        for mode in ("train", "test"):
            images, labels = problems.load_tfds("mnist", mode)
            pixels = images.reshape(-1, 784).astype(np.float32)
            arrays[mode] = (pixels if FLAGS.raw_pixels else pixels / 255.0, labels)
    else:
        arrays = dataset_splits(FLAGS.dataset)
    if FLAGS.pretrain_classes:
        return fine_tuning_splits(arrays)
    train, validation = split_train_validation(*arrays["train"], validation_size(),
                                               FLAGS.train_examples)
    data = {"train": train, "validation": validation, "test": arrays["test"]}
    if FLAGS.label_noise:
        data = with_label_noise(data, FLAGS.label_noise)
    if FLAGS.dataset == "mnist" or FLAGS.dataset in TEXT_DATASETS or FLAGS.unstandardised:
        return data
    return standardised(data, regress=DATASET_TASKS[FLAGS.dataset] == "regress")


def fine_tuning_splits(arrays):
    """For --pretrain_classes: "pretrain", every image of those digits in the training part;
    "train", the first --train_examples images of the other digits there (0: all); the
    validation and test splits' images of the other digits."""
    source, target = fine_tune_classes()
    train, validation = split_train_validation(*arrays["train"], validation_size())

    def of_digits(split, digits, first=None):
        x, y = split
        keep = np.flatnonzero(np.isin(y, digits))[:first]
        return x[keep], y[keep]

    return {"pretrain": of_digits(train, source),
            "train": of_digits(train, target, FLAGS.train_examples or None),
            "validation": of_digits(validation, target),
            "test": of_digits(arrays["test"], target)}


def with_label_noise(data, fraction):
    """`data` with `fraction` of the training and of the validation labels (each split's
    first examples of one fixed shuffle, `LABEL_NOISE_SEED`) replaced by another class drawn
    uniformly, as labelling mistakes are: a user's validation split is as noisy as the data
    it was split from. The test split keeps its labels, so its loss measures what the model
    learnt of the true classes rather than of the mistakes."""
    rng = np.random.default_rng(LABEL_NOISE_SEED)
    classes = int(max(y.max() for _, y in data.values())) + 1
    noisy = dict(data)
    for split in ("train", "validation"):
        x, y = data[split]
        wrong = rng.permutation(len(y))[:round(fraction * len(y))]
        y = y.copy()
        y[wrong] = (y[wrong] + rng.integers(1, classes, len(wrong))) % classes
        noisy[split] = (x, y)
    return noisy


def standardised(data, regress):
    """`data` with every split's features (and, for a regression, its target) standardised
    with the training split's mean and deviation, as a user would: the other splits are
    not standardised on themselves."""
    x, y = data["train"]
    x_mean, x_std = x.mean(0), x.std(0)
    x_std[x_std == 0] = 1  # a feature constant in training (the digits' blank corners) stays 0
    y_mean, y_std = (y.mean(), y.std()) if regress else (0, 1)
    return {split: ((x - x_mean) / x_std, (y - y_mean) / y_std if regress else y)
            for split, (x, y) in data.items()}


def task_of(model_name, dataset):
    """The task ("classify", "reconstruct" or "regress"): a data set's own other than MNIST,
    else the model's on MNIST (`TASKS`)."""
    return DATASET_TASKS.get(dataset) or TASKS.get(model_name, "classify")


def model_on_dataset(model_name, dataset):
    """`build_model(model_name)` for `dataset`: a data set other than MNIST sets its width,
    task and classes."""
    if dataset == "mnist":
        return build_model(model_name)
    x, y = dataset_splits(dataset)["train"]
    task = task_of(model_name, dataset)
    return build_model(model_name, x.shape[1], task, int(y.max()) + 1 if task == "classify" else 1)


def run_key(model_name, optimizer, seed):
    """What a cached run must match to be reused: everything its numbers depend on, the
    model's initial weights included."""
    name = optimizer[0]
    nets = "" if name == "adam" else "|nets " + networks.nets_fingerprint(
        presets.pretrained_path(nets_of(name)))
    return (f"{model_name}|{label(optimizer)}|seed {seed}|epochs {FLAGS.epochs}|batch "
            f"{FLAGS.batch_size}|train {FLAGS.train_examples or 'all'}|validation "
            f"{validation_size()}|jit {FLAGS.jit_compile}"
            + ("" if FLAGS.dataset == "mnist" else f"|data {FLAGS.dataset}")
            + (f"|label noise {FLAGS.label_noise:g}" if FLAGS.label_noise else "")
            + ("|raw pixels" if FLAGS.raw_pixels else "")
            + ("|unstandardised" if FLAGS.unstandardised else "")
            + (f"|pretrain {''.join(map(str, fine_tune_classes()[0]))} x{FLAGS.pretrain_epochs}"
               f" then {FLAGS.fine_tune}" if FLAGS.pretrain_classes else "")
            + f"|init {initial_weights_fingerprint(model_name, seed, FLAGS.dataset)}{nets}")


@functools.cache
def initial_weights_fingerprint(model_name, seed, dataset="mnist"):
    """The first 12 hex digits of a SHA-256 of the model's initial weights for `seed`, as
    `run` makes them: a change to a model, or to what draws its seeds, makes new runs."""
    keras.utils.set_random_seed(seed)
    digest = hashlib.sha256()
    for weight in model_on_dataset(model_name, dataset).weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:12]


def run(model_name, optimizer, seed, data, measure=None):
    """Per epoch: `{"seconds", "train_loss", "validation_loss", "validation_accuracy",
    "test_loss", "test_accuracy"}`; seconds is the wall time of the epoch's fit alone.
    `measure(model, data)`, if given, returns more numbers to record after each epoch (as
    calibration.py does); it must not train the model."""
    x, y = data["train"]
    keras.utils.set_random_seed(seed)
    model = model_on_dataset(model_name, FLAGS.dataset)
    if FLAGS.pretrain_classes and not second_task():
        start_from_pretrained(model, model_name, seed, data["pretrain"])
        keras.utils.set_random_seed(seed)  # the same batches whether or not it pretrained now
    total_steps = FLAGS.epochs * -(-len(x) // FLAGS.batch_size)
    task = task_of(model_name, FLAGS.dataset)
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if task == "classify"
            else keras.losses.MeanSquaredError())
    metrics = ["accuracy"] if task == "classify" else []
    if model.losses:  # evaluate's "loss" adds the weights' penalty (mlp_l2's): report the data's
        metrics.append(keras.metrics.MeanMetricWrapper(loss.call, name="data_loss"))
    def compile_with_a_new_optimizer():
        model.compile(
            optimizer=build_optimizer(optimizer, total_steps),
            loss=loss,
            metrics=metrics,
            jit_compile={"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile],
        )

    compile_with_a_new_optimizer()
    if second_task():
        model.fit(*data["pretrain"], batch_size=FLAGS.batch_size, epochs=FLAGS.pretrain_epochs,
                  verbose=0)
        if FLAGS.fine_tune == "renew":
            compile_with_a_new_optimizer()
        keras.utils.set_random_seed(seed)  # the second task's batches as in the other modes

    def target(x, y):
        return {"classify": y, "reconstruct": x, "regress": y.astype(np.float32)}[task]

    plateau = None
    if optimizer[2] == "plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(**PLATEAU)
        plateau.set_model(model)
        plateau.on_train_begin()
    ratio, restarts = ((LargestGradientRatio(), RestartCount())
                       if FLAGS.gradient_ratio and optimizer[0] != "adam" else (None, None))
    epochs = []
    for epoch in range(FLAGS.epochs):
        start = time.perf_counter()
        history = model.fit(x, target(x, y), batch_size=FLAGS.batch_size, epochs=1, verbose=0,
                            callbacks=[ratio, restarts] if ratio else None)
        record = {"seconds": time.perf_counter() - start,
                  "train_loss": history.history["loss"][-1]}
        if ratio:
            record["largest_gradient_ratio"] = ratio.take()
            record["restarts"] = restarts.take()
        for split in ("validation", "test"):
            split_x, split_y = data[split]
            scores = model.evaluate(split_x, target(split_x, split_y), batch_size=1000,
                                    verbose=0, return_dict=True)
            record.update({f"{split}_loss": scores.get("data_loss", scores["loss"]),
                           f"{split}_accuracy": scores.get("accuracy", np.nan)})
        if measure:
            record.update(measure(model, data))
        if plateau:
            plateau.on_epoch_end(epoch, {"val_loss": record["validation_loss"]})
        epochs.append({k: float(v) for k, v in record.items()})
    return epochs


class LargestGradientRatio(keras.callbacks.Callback):
    """The largest `gradient_rms_ratio` over a learned optimizer's tensors (those whose net
    keeps the gradient decay's averages) and the training steps since the last `take()`,
    read after every step (--gradient_ratio): a run in which it stays below R is a run in
    which `restart_ratio=R` would not have fired. NaN where no tensor's net keeps them."""

    def __init__(self):
        super().__init__()
        self._optimizer = self._read = None
        self._largest = -np.inf

    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer is not self._optimizer:  # built by the first step
            self._optimizer = self.model.optimizer
            self._read = self._reader(self._optimizer)
        if self._read is not None:
            self._largest = max(self._largest, float(self._read()))

    @staticmethod
    def _reader(optimizer):
        """A `tf.function` of the largest ratio of `optimizer`'s tensors now, or None."""
        tensors = [(optimizer.nets[name], states)
                   for name, states in zip(optimizer.variable_nets, optimizer.states)
                   if getattr(optimizer.nets[name], "gradient_decay", 0)]
        if not tensors:
            return None
        return tf.function(lambda: tf.reduce_max(tf.stack([
            net.gradient_rms_ratio([state.value for state in states])
            for net, states in tensors])))

    def take(self):
        """The largest ratio since the last call (NaN if none was read), and forget it."""
        largest, self._largest = self._largest, -np.inf
        return largest if np.isfinite(largest) else np.nan


class RestartCount(keras.callbacks.Callback):
    """How many times a learned optimizer's tensors restarted (`restart_ratio`) in the
    training steps since the last `take()` (--gradient_ratio): a restart zeroes a tensor's
    state, its step count with it, so it shows as a step count back at 0 (a step skipped
    for a non-finite number keeps the count where it was and is not one).
    `LargestGradientRatio` cannot show it: the ratio read after the restarting step is the
    zeroed state's, 1. NaN where no tensor's net restarts."""

    def __init__(self):
        super().__init__()
        self._optimizer = self._read = self._counts = None
        self._restarts = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer is not self._optimizer:  # built by the first step
            self._optimizer = self.model.optimizer
            self._read = self._reader(self._optimizer)
            self._counts = None
        if self._read is None:
            return
        counts = self._read().numpy()
        if self._counts is not None:
            self._restarts += int(np.sum((counts == 0) & (self._counts > 0)))
        self._counts = counts

    @staticmethod
    def _reader(optimizer):
        """A `tf.function` of every stepped tensor's step count now, or None."""
        tensors = [states for name, states in zip(optimizer.variable_nets, optimizer.states)
                   if getattr(optimizer.nets[name], "restart_ratio", None)]
        if not tensors:
            return None
        return tf.function(lambda: tf.stack([states[2].value[0] for states in tensors]))

    def take(self):
        """The restarts since the last call (NaN if no step count was read), and forget them."""
        restarts, self._restarts = self._restarts, 0
        return float(restarts) if self._read is not None else np.nan


def shipped_twin(key):
    """`key` of a learned optimizer's run with the shipped default's nets in its place: the
    key of the shipped default's run of the same model, seed and settings."""
    return key[: key.rindex("|nets ")] + "|nets " + networks.nets_fingerprint(
        presets.pretrained_path(presets.DEFAULT_PRETRAINED))


def drawn_elsewhere(key, cache):
    """Whether `cache` holds the shipped default's run that the `default` run of `key` would
    replace once a candidate ships, but only from other initial weights: Keras's orthogonal
    initializer (the LSTM's recurrent kernel) draws other last bits on some CPUs (BUILD_NOTES,
    "Session 18" and "Session 63"), so this machine's run has no shipped twin, the table
    drawn there needs the run made there, and --runs_only leaves it to such a machine."""
    twin = shipped_twin(key)
    stem, nets = twin[: twin.index("|init ")] + "|init ", twin[twin.rindex("|nets "):]
    return twin not in cache and any(
        other.startswith(stem) and other.endswith(nets) for other in cache)


def second_task():
    """Whether each optimizer pretrains the model itself (--fine_tune=continue or renew)."""
    return bool(FLAGS.pretrain_classes) and FLAGS.fine_tune in ("continue", "renew")


def start_from_pretrained(model, model_name, seed, pretrain):
    """Gives `model` (as `run` makes it for `seed`) the weights that Adam() leaves after
    --pretrain_epochs on `pretrain` at --batch_size, except its last layer, which keeps its initial draw:
    a new head, as in Keras's transfer-learning guide (one of ten logits, the pretrained
    digits' left unused). With --fine_tune=head every other layer is frozen."""
    key = (model_name, seed)
    if key not in PRETRAINED_WEIGHTS:
        keras.utils.set_random_seed(seed)
        pretrained = model_on_dataset(model_name, "mnist")
        pretrained.compile(optimizer=keras.optimizers.Adam(DEFAULT_ADAM_RATE),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pretrained.fit(*pretrain, batch_size=FLAGS.batch_size, epochs=FLAGS.pretrain_epochs,
                       verbose=0)
        PRETRAINED_WEIGHTS[key] = pretrained.get_weights()
    head = model.layers[-1]
    new_head = head.get_weights()
    model.set_weights(PRETRAINED_WEIGHTS[key])
    head.set_weights(new_head)
    if FLAGS.fine_tune == "head":
        for layer in model.layers[:-1]:
            layer.trainable = False


def best_adam_rate(results, model_name, seeds, epoch, schedule="constant"):
    """The rate of Adam with `schedule` (and no weight decay) with the lowest mean validation
    loss at `epoch` (a diverged rate, NaN, never wins). Chosen on the validation split only;
    the test split is not read."""
    scores = {}
    for (name, optimizer), runs in results.items():
        if (name == model_name and optimizer[0] == "adam" and optimizer[2] == schedule
                and not weight_decay_of(optimizer)):
            losses = [runs[seed][epoch - 1]["validation_loss"] for seed in seeds]
            scores[optimizer[1]] = np.mean(losses) if np.all(np.isfinite(losses)) else np.inf
    return min(scores, key=scores.get), scores


def mean_and_error(values):
    """`"mean ± standard error"`, or the value alone for one seed (no error to state)."""
    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1) / np.sqrt(len(values)):.4f}"


def report(results, optimizers, seeds, report_epochs, sizes):
    """The Markdown tables: per reported epoch, test loss and accuracy of Adam(), the best
    constant Adam, the best Adam of each schedule run at several rates and the other
    optimizers; test loss per epoch; wall time per epoch. `sizes`: examples per split."""
    models = list(dict.fromkeys(name for name, _ in results))
    # Schedules whose Adam rate is chosen on validation: the constant one, and any other
    # that Adam was run with at several rates.
    tuned = ["constant"] + [schedule for schedule in SCHEDULES
                            if len({o[1] for o in optimizers if o[0] == "adam"
                                    and o[2] == schedule and not weight_decay_of(o)}) > 1]
    others = [o for o in optimizers
              if o[0] != "adam" or o[2] not in tuned or weight_decay_of(o)]
    if FLAGS.dataset == "mnist":
        data = f"MNIST; trained on the first {sizes['train']:,} images of the train split"
        losses = (" Loss: the classifiers' cross-entropy"
                  + ("; the autoencoder's mean squared error of its reconstruction (no accuracy)"
                     if "autoencoder" in models else "")
                  + ("; the regression's squared error of the digit's value (no accuracy)"
                     if "regression" in models else "") + ".")
    elif FLAGS.dataset in TEXT_DATASETS:
        data = (f"generated reviews of IMDB's shape (experiments/reviews.py, "
                f"{TEXT_DATASETS[FLAGS.dataset]['n_samples']:,} reviews of "
                f"{reviews.LENGTH} word ids from a {reviews.VOCABULARY:,}-word vocabulary, two "
                f"classes, seed {SKLEARN_SPLIT_SEED}), shuffled once; trained on the first "
                f"{sizes['train']:,} reviews of its train split")
        losses = " Loss: cross-entropy."
    else:
        generated = GENERATED_DATASETS.get(FLAGS.dataset, {})
        drawn = "".join(f"{name}={value}, " for name, value in generated.items())
        regress = DATASET_TASKS[FLAGS.dataset] == "regress"
        scaling = (f"its features{' and target' if regress else ''} as loaded or drawn, not "
                   "standardised" if FLAGS.unstandardised else
                   "its features standardised with the training examples' mean and deviation")
        data = (f"scikit-learn's {FLAGS.dataset} data set"
                + (f" ({drawn}seed {SKLEARN_SPLIT_SEED})" if generated else "")
                + f", shuffled once, {scaling}; trained on the first {sizes['train']:,} "
                "examples of its train split")
        regressed = "target in its own units" if FLAGS.unstandardised else "standardised target"
        losses = (f" Loss: the squared error of the {regressed} (no accuracy)." if regress
                  else " Loss: cross-entropy.")
    if FLAGS.pretrain_classes:
        source, target = fine_tune_classes()
        first_task = (f"{FLAGS.pretrain_epochs} epochs on the train split's "
                      f"{sizes['pretrain']:,} images of digits {digits(source)}")
        data = (f"MNIST's digits {digits(target)} only (training, validation and test), "
                + (f"a second task: each optimizer first trained the model for {first_task} "
                   + ("and went on with the same optimizer and last layer"
                      if FLAGS.fine_tune == "continue" else
                      "and a new optimizer of the same kind went on, with the same last layer")
                   if second_task() else
                   f"fine-tuned from Adam() after {first_task}, with a new last layer"
                   + (" and the rest frozen" if FLAGS.fine_tune == "head" else ""))
                + f"; trained on the first {sizes['train']:,} images of the train split's "
                f"digits {digits(target)}")
    if FLAGS.raw_pixels:
        data += ", its pixels as stored, 0-255 (not divided by 255)"
    if FLAGS.label_noise:
        data += (f", {100 * FLAGS.label_noise:g}% of its labels and of the validation split's "
                 "replaced by another class drawn uniformly (the test split's labels are true)")
    if "mlp_l2" in models:
        losses += (" mlp_l2's is the data's alone, without the penalty on its weights that it"
                   " trains on.")
    lines = [
        f"Command: `python experiments/keras_fit.py {' '.join(sys.argv[1:])}`",
        "",
        f"{data} (batch {FLAGS.batch_size}, jit_compile={FLAGS.jit_compile}); Adam's rate "
        + (f"chosen on the {sizes['validation']:,} images of those digits among the train "
           f"split's last {validation_size():,} " if FLAGS.pretrain_classes
           else f"chosen on the last {sizes['validation']:,} ")
        + "(validation); every number below is on "
        f"the {sizes['test']:,} {'images' if FLAGS.dataset == 'mnist' else 'examples'} of the "
        "test split, which no run trained on or chose by. "
        + (f"Mean ± standard error over seeds {', '.join(map(str, seeds))}." if len(seeds) > 1
           else f"Seed {seeds[0]} only: no standard error.")
        + losses,
    ]
    if FLAGS.default_nets:
        lines += ["", f"`default` here is `{FLAGS.default_nets}` (--default_nets), not the "
                  "shipped default."]
    columns = (["model", "Adam() (0.001)", "best constant Adam (rate)"]
               + [f"best Adam, {schedule} (rate)" for schedule in tuned[1:]]
               + [label(o) for o in others])
    for epoch in report_epochs:
        lines += ["", f"Test loss (accuracy) after epoch {epoch}:", "",
                  "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for model_name in models:
            bests = [("adam", best_adam_rate(results, model_name, seeds, epoch, schedule)[0],
                      schedule) for schedule in tuned]
            cells = []
            for optimizer in [DEFAULT_ADAM, *bests, *others]:
                runs = [results[(model_name, optimizer)][seed][epoch - 1] for seed in seeds]
                loss = mean_and_error([r["test_loss"] for r in runs])
                accuracy = np.mean([r["test_accuracy"] for r in runs])
                cells.append(loss if np.isnan(accuracy) else f"{loss} ({100 * accuracy:.2f}%)")
            for i, (_, rate, _) in enumerate(bests, 1):
                cells[i] += f" ({rate:g})"
            lines.append(f"| {model_name} | " + " | ".join(cells) + " |")
    for schedule in tuned:
        lines += ["", f"Validation loss of Adam's grid, {schedule} (mean over seeds; the lowest "
                  "is chosen):", ""]
        for epoch in report_epochs:
            for model_name in models:
                _, scores = best_adam_rate(results, model_name, seeds, epoch, schedule)
                lines.append(f"- epoch {epoch}, {model_name}: " + ", ".join(
                    f"{rate:g}: {score:.4f}" for rate, score in sorted(scores.items())))
    epochs = range(1, FLAGS.epochs + 1)
    lines += ["", "Test loss after each epoch (mean over seeds):", "",
              "| model | optimizer | " + " | ".join(f"{e}" for e in epochs) + " |",
              "| --- | --- | " + " | ".join("---" for _ in epochs) + " |"]
    for (model_name, optimizer), runs in results.items():
        means = [np.mean([runs[s][e - 1]["test_loss"] for s in seeds]) for e in epochs]
        lines.append(f"| {model_name} | {label(optimizer)} | "
                     + " | ".join(f"{m:.4f}" for m in means) + " |")
    lines += optimizer_table(
        "Stability: the last epoch's test loss over the run's best epoch's, minus 1 (mean over "
        "seeds; worst seed), and runs with a non-finite loss:", results, models, optimizers,
        lambda runs: stability(runs, seeds))
    learned = [o for o in optimizers if o[0] != "adam"]
    if learned and any("largest_gradient_ratio" in record for (_, optimizer), runs
                       in results.items() if optimizer in learned for record in runs[seeds[0]]):
        lines += optimizer_table(
            "Largest gradient RMS ratio (`gradient_rms_ratio`: a tensor's ~100-step gradient "
            "RMS over its own at step `gradient_decay_steps`, 700 in the default) over every "
            "tensor and training step (mean over seeds; largest seed): `restart_ratio=R` "
            "would have fired in a run of a net without it exactly where this exceeds R (a "
            "restart zeroes the averages, so a restarting net's own restarts do not show). "
            "--gradient_ratio; \"-\": not recorded, or a net without the gradient decay:",
            results, models, learned, lambda runs: largest_ratio(runs, seeds))
        lines += optimizer_table(
            "Tensor restarts (`restart_ratio`: a tensor's state zeroed), summed over the "
            "run's epochs (mean over seeds; most in a seed). --gradient_ratio; \"-\": not "
            "recorded, or a net without the restart:", results, models, learned,
            lambda runs: restart_count(runs, seeds))
    first = 1 if FLAGS.epochs > 1 else 0
    lines += optimizer_table(
        "Wall time of one epoch's `fit`, seconds (median over seeds and epochs; the first "
        "epoch, which compiles, left out when there are more). Each run is timed as it was "
        "made, often with other jobs sharing the machine, so columns made in different "
        "sessions do not compare; `experiments/benchmark.py` times steps on an idle "
        "machine:", results, models, optimizers,
        lambda runs: f"{np.median([r['seconds'] for s in seeds for r in runs[s][first:]]):.2f}")
    return "\n".join(lines) + "\n"


def digits(numbers):
    """"0-4" for a run of digits, else "0, 2, 5"."""
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(map(str, numbers))


def optimizer_table(title, results, models, optimizers, cell):
    """Markdown lines: a table of `cell(runs by seed)` per model (rows) and optimizer."""
    lines = ["", title, "", "| model | " + " | ".join(label(o) for o in optimizers) + " |",
             "| --- | " + " | ".join("---" for _ in optimizers) + " |"]
    for model_name in models:
        lines.append(f"| {model_name} | " + " | ".join(
            cell(results[(model_name, optimizer)]) for optimizer in optimizers) + " |")
    return lines


def stability(runs, seeds):
    """How far each run's last test loss ends above its best epoch's: mean (worst seed)."""
    curves = [np.array([r["test_loss"] for r in runs[s]]) for s in seeds]
    rises = [curve[-1] / np.min(curve) - 1 for curve in curves]
    failed = sum(not np.all(np.isfinite(curve)) for curve in curves)
    return (f"{100 * np.mean(rises):+.1f}% ({100 * np.max(rises):+.1f}%)"
            + (f", {failed} non-finite" if failed else ""))


def largest_ratio(runs, seeds):
    """The largest gradient ratio over each run's epochs: mean over seeds (largest seed)."""
    largest = [np.max([r.get("largest_gradient_ratio", np.nan) for r in runs[s]])
               for s in seeds]
    if not np.all(np.isfinite(largest)):
        return "-"
    return f"{np.mean(largest):.2f} ({np.max(largest):.2f})"


def restart_count(runs, seeds):
    """Each run's restarts over its epochs: mean over seeds (most in a seed)."""
    counts = [np.sum([r.get("restarts", np.nan) for r in runs[s]]) for s in seeds]
    if not np.all(np.isfinite(counts)):
        return "-"
    return f"{np.mean(counts):.1f} ({np.max(counts):.0f})"


def csv_text(results, seeds):
    """Every epoch of every run; quoted by `csv`, as labels such as "x 0.3, cosine" hold commas."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    fields = ["seconds", "train_loss", "validation_loss", "validation_accuracy", "test_loss",
              "test_accuracy"]
    writer.writerow(["model", "optimizer", "seed", "epoch", *fields])
    for (model_name, optimizer), runs in results.items():
        for seed in seeds:
            for epoch, record in enumerate(runs[seed], 1):
                writer.writerow([model_name, label(optimizer), seed, epoch]
                                + [f"{record[f]:.6g}" for f in fields])
    return text.getvalue()


def plot(path, results, seeds):
    """Test loss against epochs, one panel per model."""
    import matplotlib  # checked for by main

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(name for name, _ in results))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for ax, model_name in zip(axes[0], models):
        for (name, optimizer), runs in results.items():
            if name == model_name:
                curve = np.mean([[r["test_loss"] for r in runs[s]] for s in seeds], axis=0)
                ax.plot(range(1, len(curve) + 1), curve, label=label(optimizer))
        ax.set_yscale("log")
        ax.set_title(model_name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test loss")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cached_runs(run_one, optimizers, seeds, data, describe):
    """`{(model_name, optimizer): {seed: run_one(model_name, optimizer, seed, data)}}` for
    --models, each run taken from `<output>_runs.json` (key: `run_key`) when it is there, and
    stored there as soon as it finishes otherwise (printing `describe(key, run)`), so that
    the same command continues a stopped job."""
    cache_path = FLAGS.output[: -len(".md")] + "_runs.json" if FLAGS.output else None
    cache = {}
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    results = {}
    for model_name in model_names():
        for optimizer in optimizers:
            runs = results[(model_name, optimizer)] = {}
            for seed in seeds:
                key = run_key(model_name, optimizer, seed)
                if key not in cache:
                    if (FLAGS.runs_only and optimizer[0] == "default"
                            and drawn_elsewhere(key, cache)):
                        print(f"{model_name} {label(optimizer)} seed {seed}: not made, the "
                              "shipped default's run is from other initial weights (another "
                              "machine's); run this command there.", flush=True)
                        continue
                    cache[key] = run_one(model_name, optimizer, seed, data)
                    if cache_path:
                        cli.write_text_atomically(cache_path, json.dumps(cache, indent=0))
                    print(describe(model_name, optimizer, seed, cache[key]), flush=True)
                runs[seed] = cache[key]
    return results


def summary(model_name, optimizer, seed, epochs):
    last = epochs[-1]
    accuracy = ("" if np.isnan(last["test_accuracy"])
                else f", accuracy {last['test_accuracy']:.4f}")
    return (f"{model_name:12s} {label(optimizer):24s} seed {seed}: test loss "
            f"{last['test_loss']:.4f}{accuracy} ({sum(r['seconds'] for r in epochs):.0f} s)")


def main(argv):
    optimizers, seeds, report_epochs = check_flags()
    if FLAGS.output and not FLAGS.runs_only:
        cli.require("matplotlib", "experiments")  # for the plot, before hours of work
    data = load_data()
    results = cached_runs(run, optimizers, seeds, data, summary)
    if FLAGS.runs_only:
        return
    table = report(results, optimizers, seeds, report_epochs,
                   {split: len(y) for split, (_, y) in data.items()})
    print(table)
    if FLAGS.output:
        cli.write_text_atomically(FLAGS.output, table)
        cli.write_text_atomically(FLAGS.output[: -len(".md")] + ".csv", csv_text(results, seeds))
        plot(FLAGS.output[: -len(".md")] + ".png", results, seeds)


if __name__ == "__main__":
    cli.run(main)
