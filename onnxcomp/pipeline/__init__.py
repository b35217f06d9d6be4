"""The pipeline floor: the Pass contract, options, registry, pipeline text, manager and verification. Knows no technique."""
