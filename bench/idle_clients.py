"""Entry point of bench/idle_clients (see bench/README.md and docs/benchmarks.md): puts bench/ on the
import path and runs idle.cli. Holds no logic of its own.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle.cli import main  # after the path is set just above

if __name__ == "__main__":
    main()
