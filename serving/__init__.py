"""Serving: the FastAPI retrieval API over the exported towers and FAISS index."""
