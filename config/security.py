"""Security middleware: a Content-Security-Policy header, a hard cap on request bodies, NUL characters
refused in page addresses, and login rate limiting. Django 5.2 ships none of these; each is small enough
to own."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse


class ContentSecurityPolicyMiddleware:
    """Adds ``settings.LOUPE_CONTENT_SECURITY_POLICY`` to every response that has none yet."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = getattr(settings, "LOUPE_CONTENT_SECURITY_POLICY", "")
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response


class RequestSizeLimitMiddleware:
    """Refuses a body larger than ``settings.LOUPE_MAX_REQUEST_BYTES`` with 413, before anything reads it.

    Django's own DATA_UPLOAD_MAX_MEMORY_SIZE skips file uploads, so a multipart upload would otherwise be
    streamed to disk whatever its size.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.LOUPE_MAX_REQUEST_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return HttpResponse("Content-Length is not a number.", status=400, content_type="text/plain")
        if length > limit:
            return HttpResponse(
                f"Request body too large: {length} bytes, the limit is {limit} bytes.",
                status=413,
                content_type="text/plain",
            )
        return self.get_response(request)


class NulCharacterMiddleware:
    """Answers 400 to a page address (path or query) holding a NUL character (``%00``).

    PostgreSQL refuses NUL inside text, so any page that filters on a query parameter (a search box,
    the admin's changelists, the review audit) would otherwise fail with a 500 on ``?q=%00``; no page
    has a use for one. The API validates its own parameters (422 with the field's name).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/api/") and _has_nul(request):
            return HttpResponse(
                "The address contains a NUL character (%00), which no page accepts. Remove it and try again.",
                status=400,
                content_type="text/plain",
            )
        return self.get_response(request)


def _has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path:
        return True
    return any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists())


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or the hop a trusted proxy appended to X-Forwarded-For."""
    proxies = settings.LOUPE_NUM_PROXIES
    if proxies:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _login_paths() -> set[str]:
    paths = set()
    for name in ("login", "admin:login"):
        try:
            paths.add(reverse(name))
        except NoReverseMatch:
            pass
    return paths


class LoginRateLimitMiddleware:
    """Counts failed logins per (username, address) and per address; over the limit answers 429.

    A failed login is a POST to a login page that comes back 200 (the form shown again with its error)
    without a logged-in user; a successful one (a redirect) clears the username's failures from that
    address. The counters live in the database so every web worker shares them.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.paths: set[str] | None = None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.paths is None:
            self.paths = _login_paths()
        if request.method != "POST" or request.path not in self.paths:
            return self.get_response(request)

        from accounts import services
        from accounts.usernames import username_failure_key

        # Counted under the spelling the login form authenticates (stripped, NFKC), so " curator" or
        # full-width "ｃｕｒａｔｏｒ" share curator's allowance instead of bringing their own.
        username = username_failure_key(request.POST.get("username") or "")
        ip = client_ip(request)
        retry_after = services.login_lockout_seconds(username=username, ip=ip)
        if retry_after:
            return _too_many_attempts(request, retry_after)
        response = self.get_response(request)
        user = getattr(request, "user", None)
        logged_in = user is not None and user.is_authenticated
        if response.status_code == 200 and not logged_in:
            services.login_failure_record(username=username, ip=ip)
        elif logged_in and 300 <= response.status_code < 400:
            services.login_failures_clear(username=username, ip=ip)
        return response


def _too_many_attempts(request: HttpRequest, retry_after: int) -> HttpResponse:
    minutes = max(1, round(retry_after / 60))
    message = (
        f"Too many failed logins from your address for this account. Try again in about {minutes} "
        f"minute{'s' if minutes != 1 else ''}, or ask an admin to reset your password."
    )
    body = render_to_string("accounts/login_locked.html", {"message": message}, request=request)
    response = HttpResponse(body, status=429)
    response["Retry-After"] = str(retry_after)
    return response
