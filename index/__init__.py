"""Embedding a photo folder with the exported encoder and storing it in FAISS + SQLite."""
