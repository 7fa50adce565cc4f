import sys

from gliaflow.workflows.cli import main

sys.exit(main())
