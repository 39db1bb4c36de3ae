"""DFlash2's candidate selector (z-lab) as a SpecForge corrector."""
