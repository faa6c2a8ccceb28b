"""Cost-budget planner for CLIP training: run-spec contract, FLOP counter, hardware catalog and cost model, result
store, inverse-scaling accuracy model, candidate search, and the planner's CLI commands. Never imports JAX."""
