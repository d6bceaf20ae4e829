"""Hand-offs between zoo nets and other frameworks' own models (timm, open_clip), both ways, with equal outputs.

Each module imports its framework only when called, so ``import zoo`` never needs it; a missing one is
named with the extra that installs it.
"""

__all__: list[str] = []
