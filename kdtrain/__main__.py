"""``python -m kdtrain`` entry point (no arguments runs the built-in demo)."""

import sys

from kdtrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
