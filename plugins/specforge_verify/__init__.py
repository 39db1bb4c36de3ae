"""Built-in verifiers: chain (EAGLE-style longest prefix / speculative sampling)."""
