"""The HTTP routes, one module per resource; `api_router` gathers them."""

from __future__ import annotations

from fastapi import APIRouter

from backend.app.routes import backtest, cards, dashboard, metrics, models, system, training

api_router = APIRouter()
api_router.include_router(training.router)
api_router.include_router(models.router)
api_router.include_router(cards.router)
api_router.include_router(system.router)
api_router.include_router(metrics.router)
api_router.include_router(dashboard.router)
api_router.include_router(backtest.router)
