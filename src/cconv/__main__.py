"""``python -m cconv``: the same as the ``cconv`` console script."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
