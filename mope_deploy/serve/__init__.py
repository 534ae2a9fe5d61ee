"""Retrieval service: bulk indexing (``mope index``) and a FastAPI server (``mope serve``) with cross-request
micro-batching, a FAISS index, a search page, and Ray Serve / Ray Data for scale-out.

    from mope_deploy.serve.build import load_collection, build_index
    from mope_deploy.serve.server import build_app, run

Needs the ``serve`` extra (fastapi, uvicorn, faiss-cpu, prometheus-client); Ray needs the ``ray`` extra.
"""
