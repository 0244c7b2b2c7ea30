"""The search service: ``create_app(settings)`` (``search_api.app``) over a ``SearchService``.

Web-only code lives here; the model (``fashionbert``) and the index files (``indexer``) know
nothing of HTTP.
"""
