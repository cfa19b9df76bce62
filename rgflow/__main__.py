"""``python -m rgflow`` (also under ``torchrun``) runs the command line."""
import sys

from rgflow.cli import main

sys.exit(main())
