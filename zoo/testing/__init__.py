"""Scaffolding for tests, the demo and benchmarks: Meta-layout checkpoints with seeded random weights, and an
offline Hugging Face Hub cache to put them in. The library proper never imports it."""

__all__: list[str] = []  # the helpers live in zoo.testing.synthetic and zoo.testing.hub_cache
