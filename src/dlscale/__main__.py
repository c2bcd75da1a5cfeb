"""``python -m dlscale`` works exactly like the ``dlscale`` command."""

from dlscale.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
