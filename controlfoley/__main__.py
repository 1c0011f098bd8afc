from controlfoley.cli import run

raise SystemExit(run())
