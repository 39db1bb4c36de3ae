"""DSpark's Markov head (DeepSeek DeepSpec) as a SpecForge corrector: a low-rank previous-token correction."""
