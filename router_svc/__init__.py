"""router_svc: serves Route: classify, pick the cheapest adequate model, call it, validate, account."""
