"""``python -m ptmdd_lightning`` = the ``ptmdd`` command."""

from ptmdd_lightning.main import main

if __name__ == "__main__":
    main()
