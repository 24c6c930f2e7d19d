"""``python -m easlurm COMMAND …`` is ``easlurm COMMAND …`` (:mod:`easlurm.cli`)."""
import sys

from .cli import main

sys.exit(main())
