"""The `llmroute` command: route a prompt, read spend (once or live), manage budgets."""
