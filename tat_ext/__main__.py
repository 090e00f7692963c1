"""`python -m tat_ext ...` is the same as the `tat-ext` console script."""
from tat_ext.cli import main

raise SystemExit(main())
