"""``python -m dataset_prep``: the same as ``srt-prep``."""

import sys

from dataset_prep.cli import main

sys.exit(main())
