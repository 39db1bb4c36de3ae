"""DFlash block-parallel drafter (z-lab/dflash layout), inference and training objective."""
