"""DFlash2 block-parallel drafter (z-lab ``dflash`` 0.1.0 checkpoint layout) and its CandidateSelector module."""
