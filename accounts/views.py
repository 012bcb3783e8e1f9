"""The API token page: a logged-in user lists, creates and revokes their own tokens."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.models import ApiToken
from accounts.services import api_token_create, api_token_revoke


@require_GET
@login_required
def token_list(request):
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "accounts/tokens.html", {"tokens": tokens})


@require_POST
@login_required
def token_create(request):
    token, raw = api_token_create(user=request.user, name=request.POST.get("name", "").strip())
    tokens = ApiToken.objects.filter(user=request.user)
    # Rendered, not redirected: the raw token exists only in this response.
    return render(
        request, "accounts/tokens.html", {"tokens": tokens, "new_token": raw, "new_token_row": token}
    )


@require_POST
@login_required
def token_revoke(request, token_id: int):
    # Another user's token id is a 404, the same as a missing one.
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    api_token_revoke(token=token)
    messages.success(request, f"Token {token.prefix}… revoked; requests using it now get 401.")
    return redirect("accounts:tokens")
