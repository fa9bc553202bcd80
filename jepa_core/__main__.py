import sys

from jepa_core.commands.cli import main

sys.exit(main())
