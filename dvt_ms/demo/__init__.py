"""The demo: an embedded easy-to-hard image dataset (``dataset``) and the summary of a demo run.

Nothing in the library imports this package."""
