import sys

from dlrlens.cli import main

sys.exit(main())
