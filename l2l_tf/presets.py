"""Named sets of constants for the coordinatewise LSTM.

The paper and the original code disagree on the preprocessing k and the output scale; both
are shipped under names so a run says which one it used.
"""

from l2l_tf import networks

PRESETS = {
    # The original code (networks.py defaults used by meta.MetaOptimizer and util.get_config).
    "original": {"preprocess_options": {"k": 5}, "scale": 0.01},
    # The paper (Appendix A: p = 10; output scaled by 0.1).
    "paper": {"preprocess_options": {"k": 10}, "scale": 0.1},
}

DEFAULT_NET_NAME = "coordinatewise"


def coordinatewise_net_options(preset="original", layers=(20, 20)):
    """Options of the default coordinatewise LSTM (2 x 20 units, LogAndSign) for a preset."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}: use one of {sorted(PRESETS)}.")
    return {"layers": tuple(layers), "preprocess_name": "LogAndSign", **PRESETS[preset]}


def default_nets(preset="original"):
    """The original MetaOptimizer's default: one coordinatewise LSTM for every variable."""
    return {
        DEFAULT_NET_NAME: networks.CoordinateWiseDeepLSTM(**coordinatewise_net_options(preset))
    }
