"""``python -m zoo.birder SCRIPT [ARGS...]``: birder's scripts and tools with the zoo's networks registered."""

import sys

from zoo.cli.birder import main

if __name__ == "__main__":
    sys.exit(main())
