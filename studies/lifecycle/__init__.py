"""A study from start to end: the checks before anything starts, the one lock per study, running the search and
the confirmation stage on Ray Tune, what it prints while it runs, and how it ends when interrupted or failed."""
