"""python -m chat_server.loadtest --help"""

import sys

from chat_server.loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
