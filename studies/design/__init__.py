"""What a study searches, decided before it runs: its settings, each dataset's study defaults, the search
spaces (built-in or a --space file) and the seeds of its runs. Imports nothing of Ray, Tune or MLflow's stores."""
