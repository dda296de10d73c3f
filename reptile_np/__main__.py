"""``python -m reptile_np``: the same command as ``reptile-np``."""
import sys

from .cli import main

sys.exit(main())
