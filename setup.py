"""Install l2l_tf: `pip install .` (or `pip install -e ".[test]"` for development)."""

from setuptools import find_packages, setup

setup(
    name="l2l_tf",
    version="0.1.0",
    description=(
        "Learned optimizers for TensorFlow 2 and Keras 3: 'Learning to learn by gradient "
        "descent by gradient descent' (Andrychowicz et al., 2016)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["l2l_tf", "l2l_tf.*"]),
    package_data={"l2l_tf": ["pretrained/*/*.npz", "pretrained/*/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "keras==3.15.*",
        "tensorflow-datasets==4.9.10",
        # tensorflow-datasets 4.9.10 imports it without declaring it.
        "importlib_resources",
        "absl-py",
        # tf.summary needs it for the TensorBoard summaries of meta-training; TF 2.21 no
        # longer installs it.
        "tensorboard==2.21.*",
        "numpy",
    ],
    extras_require={
        # The tests run the experiment scripts, plots and bundled data sets included;
        # pytest-xdist runs them in two processes (BUILD_NOTES.md, "Session 27").
        "test": ["pytest", "pytest-xdist", "matplotlib", "scikit-learn"],
        # experiments/reproduce.py and keras_fit.py draw plots; keras_fit.py --dataset reads
        # the small data sets that scikit-learn ships. The library needs neither.
        "experiments": ["matplotlib", "scikit-learn"],
    },
    license="Apache-2.0",
)
