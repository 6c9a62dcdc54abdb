import math

import numpy as np
import pytest
import tensorflow as tf

from l2l_tf import preprocess


def paper_log_and_sign(g, k):
    """The paper's piecewise formula (Appendix A), written independently of the code."""
    if abs(g) >= math.exp(-k):
        return (math.log(abs(g)) / k, float(np.sign(g)))
    return (-1.0, math.exp(k) * g)


@pytest.mark.parametrize("k", [5, 10])
def test_log_and_sign_matches_paper_on_both_sides_of_threshold(k):
    threshold = math.exp(-k)
    values = [
        threshold * 1.5, -threshold * 1.5, threshold * 0.5, -threshold * 0.5,
        threshold * 1e-3, 0.3, -7.0, 123.0, 0.0,
    ]
    got = preprocess.LogAndSign(k)(tf.constant(values, tf.float32)[:, None]).numpy()
    assert got.shape == (len(values), 2)
    for (log_part, sign_part), g in zip(got, values):
        want = paper_log_and_sign(g, k)
        # The code adds float32 eps inside the log (as the original does): at |g| = 1.5 e^-10
        # that moves the log part by eps / (|g| k) < 2e-4.
        np.testing.assert_allclose([log_part, sign_part], want, rtol=1e-5, atol=2e-4)


def test_log_and_sign_is_continuous_at_threshold():
    k = 5
    t = math.exp(-k)
    got = preprocess.LogAndSign(k)(tf.constant([[t * (1 - 1e-4)], [t * (1 + 1e-4)]])).numpy()
    np.testing.assert_allclose(got[0], got[1], atol=1e-3)
    np.testing.assert_allclose(got[0], [-1.0, 1.0], atol=1e-3)


def test_clamp_and_identity():
    x = tf.constant([-3.0, 0.5, 4.0])
    np.testing.assert_array_equal(preprocess.Clamp(-1.0, 1.0)(x), [-1.0, 0.5, 1.0])
    np.testing.assert_array_equal(preprocess.Clamp(min_value=0.0)(x), [0.0, 0.5, 4.0])
    np.testing.assert_array_equal(preprocess.factory("identity")(x), x)


def test_factory_by_original_names_and_errors():
    assert preprocess.factory("LogAndSign", {"k": 10}).k == 10
    assert preprocess.factory("Clamp", {"min_value": 0}).min_value == 0
    with pytest.raises(ValueError, match="Unknown preprocess_name 'logsign'"):
        preprocess.factory("logsign")
    with pytest.raises(ValueError, match="Bad preprocess_options"):
        preprocess.factory("LogAndSign", {"p": 3})
    with pytest.raises(ValueError, match="k > 0"):
        preprocess.LogAndSign(0)
