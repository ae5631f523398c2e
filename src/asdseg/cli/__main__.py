import sys

from asdseg.cli import main

sys.exit(main())
