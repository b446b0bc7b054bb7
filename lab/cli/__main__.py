"""`python -m lab.cli` runs the CLI (used by tests that need a real process to kill)."""

from lab.cli import main

if __name__ == "__main__":
    main()
