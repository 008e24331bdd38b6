"""``python -m spacefs.cli``: the ``spacefs`` command without the console script."""

from spacefs.cli import main

if __name__ == "__main__":
    main(prog_name="spacefs")
