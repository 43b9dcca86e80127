"""`transferlab serve`: models behind an HTTP API with dynamic batching, a web page, and the Run view."""


def create_app(models, **options):
    """The ASGI app (FastAPI) serving `models` (registry names or run folders); see serve.app.create_app."""
    from .app import create_app as build

    return build(models, **options)
