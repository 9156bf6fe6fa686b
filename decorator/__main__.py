"""`python -m decorator` does what the `decorator` console script does."""

from decorator.cli import main

raise SystemExit(main())
