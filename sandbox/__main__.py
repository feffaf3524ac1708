"""`python -m sandbox --listen 127.0.0.1:0 --ready-file PATH` (the CLI's `postroom sandbox`)."""

import sys

from sandbox.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m sandbox"))
