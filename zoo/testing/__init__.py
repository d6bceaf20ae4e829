"""Scaffolding for trying the zoo offline, the tests, the demo and benchmarks: Meta-layout checkpoints with
seeded random weights, and the Hugging Face Hub cache to put them in. The library proper never imports it.

``install_random_weights(names)`` is the supported way to try everything offline (see docs/loading.md).
"""

from zoo.testing.random_weights import install_random_weights

__all__ = ["install_random_weights"]
