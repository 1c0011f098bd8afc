"""`python -m controlfoley.train {tokenizer,backbone,controlnet} ...` (also the torchrun entry point)."""

import sys

from controlfoley.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
