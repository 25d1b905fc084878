"""``python -m personsearch`` (what torchrun launches)."""

from personsearch.cli.app import main

if __name__ == "__main__":
    main()
