"""A study's answer: the confirmation of its best configurations over repeats with intervals, the Pareto front,
the trials table, the summary and plots, and the note written on the study's run."""
