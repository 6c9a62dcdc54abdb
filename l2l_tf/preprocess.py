"""Gradient preprocessing for the optimizer nets (paper, Appendix A).

Each preprocessor maps a tensor of gradients `[..., 1]` to features `[..., n]`, elementwise, so a
coordinatewise net sees the same features whichever way the coordinates are batched. They are
plain callables of tensors: differentiable, XLA-safe, with no state.
"""

import math

import tensorflow as tf


class Identity:
    """Passes the gradient through unchanged (the original's `"identity"`)."""

    def __call__(self, gradients):
        return gradients

    def get_config(self):
        return {}


class Clamp:
    """Clips values to `[min_value, max_value]`; `None` leaves that side open."""

    def __init__(self, min_value=None, max_value=None):
        self.min_value = min_value
        self.max_value = max_value

    def __call__(self, inputs):
        output = inputs
        if self.min_value is not None:
            output = tf.maximum(output, self.min_value)
        if self.max_value is not None:
            output = tf.minimum(output, self.max_value)
        return output

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


class LogAndSign:
    """The paper's preprocessing with parameter `k` (the paper's p).

    For |g| >= e^-k the features are (log|g| / k, sign g); below that they are (-1, e^k g), so
    gradients that span many orders of magnitude reach the net on a common scale. As in the
    original code: log part = max(log(|g| + eps) / k, -1), sign part = clip(e^k g, -1, 1),
    concatenated on the last axis (log first).
    """

    def __init__(self, k=5):
        if not k > 0:
            raise ValueError(f"LogAndSign needs k > 0, got k={k!r}: pass a positive number.")
        self.k = k

    def __call__(self, gradients):
        eps = tf.experimental.numpy.finfo(gradients.dtype.as_numpy_dtype).eps
        log = tf.math.log(tf.abs(gradients) + eps)
        clamped_log = Clamp(min_value=-1.0)(log / self.k)
        sign = Clamp(min_value=-1.0, max_value=1.0)(gradients * math.exp(self.k))
        return tf.concat([clamped_log, sign], axis=-1)

    def get_config(self):
        return {"k": self.k}


_PREPROCESSORS = {"identity": Identity, "Clamp": Clamp, "LogAndSign": LogAndSign}


def factory(preprocess_name="identity", preprocess_options=None):
    """Builds a preprocessor by the original's name: "identity", "Clamp" or "LogAndSign"."""
    if preprocess_name not in _PREPROCESSORS:
        raise ValueError(
            f"Unknown preprocess_name {preprocess_name!r}: use one of {sorted(_PREPROCESSORS)}."
        )
    try:
        return _PREPROCESSORS[preprocess_name](**(preprocess_options or {}))
    except TypeError as error:
        raise ValueError(
            f"Bad preprocess_options {preprocess_options!r} for {preprocess_name}: {error}."
        ) from None


def output_features(preprocessor):
    """How many features the preprocessor makes from one gradient value."""
    return 2 if isinstance(preprocessor, LogAndSign) else 1
