"""OpenAI routes (being written)."""

from fastapi import APIRouter


def build_router(engine, options) -> APIRouter:
    return APIRouter()
