"""`python -m audiosep`: the `audiosep` command (used by `separate --jobs` for its workers)."""
import sys

from .cli import main

sys.exit(main())
