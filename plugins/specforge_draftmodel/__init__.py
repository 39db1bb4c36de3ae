"""Classic speculative decoding with a small autoregressive draft model (Leviathan et al.)."""
