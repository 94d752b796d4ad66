import sys
from pathlib import Path

# make tests/stat_checks.py importable as a helper module
sys.path.insert(0, str(Path(__file__).parent))
