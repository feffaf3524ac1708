from postroom_cli.main import main

raise SystemExit(main())
