from landformer.cli import main

raise SystemExit(main())
