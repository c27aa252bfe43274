import sys

from fastcarry._cli import main

sys.exit(main())
