"""Training: data regeneration by the target, a resumable trainer, the `specforge train` wiring."""
