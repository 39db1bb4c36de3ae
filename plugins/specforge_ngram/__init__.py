"""N-gram prompt-lookup drafter (training-free)."""
