from antimetric.cli import run

run()
