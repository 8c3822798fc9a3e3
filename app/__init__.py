"""The inference service: FastAPI app serving the exported SavedModels."""
