import sys

from qwen25vl.cli import main

sys.exit(main())
