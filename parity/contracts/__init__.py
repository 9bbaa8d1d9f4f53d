"""The neutral contracts every side imports: schemas (pydantic), errors, diff metrics (numpy), the step protocol,
tolerance resolution and the family interface. Nothing here imports torch, transformers or an original package."""
