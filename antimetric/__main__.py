import sys

from antimetric.cli import main

sys.exit(main())
