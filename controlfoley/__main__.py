from controlfoley.cli import main

raise SystemExit(main())
