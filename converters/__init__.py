"""Command-line converters from Meta's PE checkpoints to the zoo's safetensors (logic lives in zoo.convert)."""
