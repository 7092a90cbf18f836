"""What the core asks of the studies without importing them, through the `antimetric.extensions` entry points
(pyproject.toml): an ensemble kept in MLflow for `antimetric.load`, and `antimetric train --tracking-uri`."""
