"""``python -m zoo.birder SCRIPT [ARGS...]``: birder's scripts and tools with the zoo's networks registered."""

import sys

from zoo.birder.scripts import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
