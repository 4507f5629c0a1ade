"""The classifier service's strategies behind one interface (`difficulty.Strategy`): the LLM classifier
and the cascade. The local models they build on (learned, heuristic) are in the `difficulty` package."""
