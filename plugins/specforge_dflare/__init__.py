"""DFlare drafter (AngelSlim): DFlash with per-draft-layer learned fusion of target layers.

Builds on the ``specforge_dflash`` plugin (its network takes ``fusion=True``), the way a
third-party plugin may extend another one it depends on.
"""
