import sys

from bench.gpu_check.driver import main

sys.exit(main())
