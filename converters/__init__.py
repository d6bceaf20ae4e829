"""Command-line converters from Meta's PE checkpoints to the zoo's safetensors (logic lives in zoo.weights)."""

__all__: list[str] = []  # each converter is its own module: python -m converters.<name>
