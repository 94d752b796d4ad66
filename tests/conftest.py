import sys
from pathlib import Path

# make tests/stat_checks.py importable as a helper module
sys.path.insert(0, str(Path(__file__).parent))

# the session-scoped throwaway repository with real asv results (slow tests only)
from asv_repository import asv_repository  # noqa: E402,F401
