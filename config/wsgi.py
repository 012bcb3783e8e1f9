import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Import the URLconf (and the ML modules its views reach) at start-up, not on the first request:
# torch takes seconds to import, which the first user would otherwise wait for.
import config.urls  # noqa: E402, F401
