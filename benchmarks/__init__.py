"""Speed measurements of antimetric, each run from the repository root as `python -m benchmarks.NAME`.

They need torch, torchvision and antimetric's core only (the GPU benchmark host has nothing else);
what they share is in benchmarks.common, and their results are in benchmarks/RESULTS.md.
"""
