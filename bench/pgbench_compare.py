"""Entry point of bench/pgbench_compare (see bench/README.md): puts bench/ on the import path and runs
compare.cli. Holds no logic of its own.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare.cli import main  # after the path is set just above

if __name__ == "__main__":
    main()
