"""CLIPSeg: timojl/clipseg CLIPDensePredT on OpenAI CLIP (origin, Docker only) vs transformers
CLIPSegForImageSegmentation (port)."""
