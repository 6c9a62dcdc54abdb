"""l2l_tf: learned optimizers for TensorFlow 2 and Keras 3.

A reimplementation of "Learning to learn by gradient descent by gradient descent"
(Andrychowicz et al., 2016), aligned with the authors' original TF1 code.
"""

from l2l_tf import networks, preprocess, presets
from l2l_tf.optimizer import LearnedOptimizer

__version__ = "0.1.0"

__all__ = ["LearnedOptimizer", "networks", "preprocess", "presets"]
