"""fitting: gradient-based shape retrieval on top of diffscat (losses, parametrisations, fits)."""
