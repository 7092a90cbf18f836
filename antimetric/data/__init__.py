"""Dataset readers, the built-in demo dataset, transforms and the manifest."""
