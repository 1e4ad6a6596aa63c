"""The FastAPI application: HTTP only; the ML core lives in `backend.ml`."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI(title="ML Automated Training Scheduler", version="0.1.0", docs_url="/api/docs",
              redoc_url=None)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
