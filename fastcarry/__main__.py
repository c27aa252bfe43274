import sys

from fastcarry.tools.cli import main

sys.exit(main())
