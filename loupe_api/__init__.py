"""The REST API's routers, mounted on ``config.api.api`` (django-ninja) at /api/."""
