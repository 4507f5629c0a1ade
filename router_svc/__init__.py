"""router_svc: serves Route: classify, pick the cheapest adequate model, call it, validate, account."""

# The caller under which the router's own warm-up calls are accounted.
WARM_UP_CALLER = "llmroute-warmup"
