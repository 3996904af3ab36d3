import sys

from tests.bench.scenarios import main

sys.exit(main())
