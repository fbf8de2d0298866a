"""``python -m dvt_ms.demo budgets|summarize ...``: see ``dvt_ms.demo.summary``."""
import sys

from .summary import main

if __name__ == "__main__":
    sys.exit(main())
