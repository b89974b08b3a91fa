"""Developer tools: the Triton launcher, the whole stack in the foreground (`make serve`), the
demo client and the served evaluation."""
