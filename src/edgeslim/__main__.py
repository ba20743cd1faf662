"""``python -m edgeslim``: the same command as the ``edgeslim`` script."""
import sys

from edgeslim.cli import main

if __name__ == "__main__":
    sys.exit(main())
