"""``python -m tfsctl``."""

from tfsctl.cli import main

main()
