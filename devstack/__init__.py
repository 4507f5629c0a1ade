"""Local stack tooling: run the services as processes (`make run`), and the demo (`make demo`)."""
