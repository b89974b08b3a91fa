"""Developer tools: the Triton and PostgreSQL launchers, the whole stack in the foreground
(`make serve`), the demo client and the served evaluation."""
