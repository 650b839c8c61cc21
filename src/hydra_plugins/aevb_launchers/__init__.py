"""aevb's Hydra launcher plugins (Hydra finds launchers only in the hydra_plugins namespace)."""
