import sys

from refbasis.cli import main

sys.exit(main())
