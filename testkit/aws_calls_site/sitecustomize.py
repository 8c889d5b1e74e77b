"""Loaded at start by every Python process with this folder on its PYTHONPATH: where
TESTKIT_AWS_CALLS names a folder, the process records its AWS calls there (testkit.aws_calls)."""

import os
import sys
from pathlib import Path

_folder = os.environ.get("TESTKIT_AWS_CALLS")
if _folder:
    sys.path.append(str(Path(__file__).resolve().parents[2]))
    from testkit.aws_calls import record_to_folder

    record_to_folder(Path(_folder))
