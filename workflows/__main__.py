import sys

from gliaflow.workflows.cli.main import main

sys.exit(main())
