"""ViT-MSN: facebookresearch/msn src/deit.py (origin, Docker only) vs transformers ViTMSNModel (port)."""
