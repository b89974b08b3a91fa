"""`make bench`: the seed-style server, the in-process limit and this stack side by side."""
