"""Entry point of bench/routing_skew (see skew/cli.py): puts bench/ on the import path and runs
skew.cli. Holds no logic of its own.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from skew.cli import main  # after the path is set just above

if __name__ == "__main__":
    main()
