"""``python -m engine ...``: the same command line as ``engine``."""

import sys


def main() -> int:
    from engine.api.cli import main as cli_main  # the one lazy upward import: api depends on engine, not back

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
