"""A person opens the product in a browser and logs in."""

import pytest

from tests.conftest import make_user


@pytest.mark.django_db(transaction=True)
def test_login_in_a_real_browser(page, live_server, browser_login, artifacts_dir):
    make_user("ada", "admin")
    browser_login("ada")
    assert page.locator("h1").inner_text() == "Welcome, ada"
    assert page.locator(".role-badge").inner_text().lower() == "admin"
    page.screenshot(path=str(artifacts_dir / "home-admin.png"), full_page=True)
    page.click("text=Log out")
    page.wait_for_url(f"{live_server.url}/login/")
