"""``python -m engine ...``: the same command line as ``engine``."""

import sys

from engine.import_path import installed_packages_first


def main() -> int:
    installed_packages_first()  # run from a checkout, kernels/ would shadow Hugging Face's `kernels`
    from engine.api.cli import main as cli_main  # the one lazy upward import: api depends on engine, not back

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
