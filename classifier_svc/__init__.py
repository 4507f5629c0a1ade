"""classifier_svc: estimates how hard a conversation is for a cheap model (score, tier, category)."""
