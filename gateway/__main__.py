import sys

from gateway.cli import main

# Guarded: serving and telemetry processes are spawned, and spawn imports this module again.
if __name__ == "__main__":
    sys.exit(main())
