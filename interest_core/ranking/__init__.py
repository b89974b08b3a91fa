"""Ranking a target catalogue: the index (exact scoring), the trained assets and their blend,
and batched scoring across concurrent requests."""
