"""SAM and SlimSAM: segment-anything 1.0 (origin) vs transformers SamModel (port)."""
