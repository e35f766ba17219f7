"""``python -m llmforge``: the same app as the ``llmforge`` console script."""

from llmforge.cli import main

if __name__ == "__main__":
    main()
