"""`python -m controlfoley.train {tokenizer,backbone,controlnet} ...` (also the torchrun entry point)."""

import sys
import warnings

from controlfoley.cli import _plain_warning
from controlfoley.train.cli import main

if __name__ == "__main__":
    warnings.formatwarning = _plain_warning  # one plain line each, as the `controlfoley` program prints them
    sys.exit(main())
