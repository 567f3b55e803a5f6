from srem_kernels.train.cli import main

raise SystemExit(main())
