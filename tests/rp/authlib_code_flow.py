"""A relying party built on Authlib runs the authorization code flow against tokend.

Authlib finds the endpoints by OpenID Connect Discovery, builds the authorization URL with
PKCE S256 (RFC 7636), state and nonce, redeems the code, validates the ID token (signature from
the JWKS, iss, aud, azp, exp, iat, nonce and at_hash: OpenID Connect Core §3.1.3.7) and calls
userinfo. The browser is played here with plain HTTP: the hosted sign-in and consent forms with
their CSRF tokens (docs/authorize.md). Prints a JSON summary and exits 0; anything else fails.

Usage: authlib_code_flow.py ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI USERNAME PASSWORD
(an empty CLIENT_SECRET makes a public client). The same values may come from RP_ISSUER,
RP_CLIENT_ID, RP_CLIENT_SECRET, RP_REDIRECT_URI, RP_USERNAME and RP_PASSWORD.
"""

import base64
import html.parser
import json
import os
import sys
import urllib.parse

import requests
from authlib.integrations.base_client import FrameworkIntegration
from authlib.integrations.base_client.sync_app import BaseApp, OAuth2Mixin
from authlib.integrations.base_client.sync_openid import OpenIDMixin
from authlib.integrations.requests_client import OAuth2Session

TIMEOUT = 30


class RelyingParty(OAuth2Mixin, OpenIDMixin, BaseApp):
    """Authlib's framework-independent OAuth 2.0 / OpenID Connect client."""

    client_cls = OAuth2Session


class Forms(html.parser.HTMLParser):
    """The forms of a page: action and the values of their inputs."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action", ""), "fields": {}})
        elif tag in ("input", "button") and self.forms and attrs.get("name"):
            self.forms[-1]["fields"].setdefault(attrs["name"], attrs.get("value") or "")


def form_with(page_html, field):
    parser = Forms()
    parser.feed(page_html)
    for form in parser.forms:
        if field in form["fields"]:
            return form
    raise RuntimeError(f"no form with a {field!r} field on the page")


def arguments():
    names = ["ISSUER", "CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI", "USERNAME", "PASSWORD"]
    args = sys.argv[1:]
    if args and len(args) != len(names):
        sys.exit(f"usage: {sys.argv[0]} " + " ".join(names))
    if not args:
        args = [os.environ.get(f"RP_{n}", "") for n in names]
    return dict(zip([n.lower() for n in names], args))


def browse(start_url, redirect_uri, username, password):
    """Plays the browser from the authorization URL to the redirect to the client; answers
    that redirect's URL without following it."""
    browser = requests.Session()
    url, method, data = start_url, "GET", None
    consented = False
    for _ in range(10):
        if method == "GET":
            res = browser.get(url, allow_redirects=False, timeout=TIMEOUT)
        else:
            res = browser.post(url, data=data, allow_redirects=False, timeout=TIMEOUT)
        if res.status_code in (302, 303):
            target = urllib.parse.urljoin(url, res.headers["Location"])
            if target.split("?")[0] == redirect_uri:
                return target, consented
            url, method, data = target, "GET", None
            continue
        if res.status_code != 200:
            raise RuntimeError(f"{method} {url} answered {res.status_code}: {res.text[:500]}")
        path = urllib.parse.urlsplit(url).path
        if path == "/login":
            form = form_with(res.text, "password")
            data = dict(form["fields"], username=username, password=password)
        elif path == "/consent":
            form = form_with(res.text, "decision")
            data = dict(form["fields"], decision="allow")
            consented = True
        else:
            raise RuntimeError(f"unexpected page {url}")
        if not data.get("csrf_token"):
            raise RuntimeError(f"no csrf_token on {path}")
        url, method = urllib.parse.urljoin(url, form["action"] or path), "POST"
    raise RuntimeError(f"too many steps (consent page seen: {consented})")


def main():
    a = arguments()
    issuer = a["issuer"].rstrip("/")
    secret = a["client_secret"] or None
    rp = RelyingParty(
        FrameworkIntegration("tokend"),
        name="tokend",
        client_id=a["client_id"],
        client_secret=secret,
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs={
            "scope": "openid profile email",
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": "client_secret_basic" if secret else "none",
            "timeout": TIMEOUT,
        },
    )
    metadata = rp.load_server_metadata()
    if metadata.get("issuer") != issuer:
        raise RuntimeError(f"discovery names issuer {metadata.get('issuer')!r}, not {issuer!r}")

    start = rp.create_authorization_url(redirect_uri=a["redirect_uri"])
    for key in ("state", "nonce", "code_verifier"):
        if not start.get(key):
            raise RuntimeError(f"Authlib made no {key}")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(start["url"]).query))
    if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
        raise RuntimeError(f"no S256 challenge in {start['url']}")

    callback, consented = browse(start["url"], a["redirect_uri"], a["username"], a["password"])
    returned = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))
    if "error" in returned:
        raise RuntimeError(f"authorization failed: {returned}")
    # RFC 9207 §2.4: the iss of the response must be the issuer the request went to.
    if metadata.get("authorization_response_iss_parameter_supported") and returned.get("iss") != issuer:
        raise RuntimeError(f"callback iss {returned.get('iss')!r} is not {issuer!r}")

    token = rp.fetch_access_token(
        redirect_uri=a["redirect_uri"],
        authorization_response=callback,
        state=start["state"],
        code_verifier=start["code_verifier"],
    )
    claims = rp.parse_id_token(token, nonce=start["nonce"])
    userinfo = rp.userinfo(token=token)
    if userinfo["sub"] != claims["sub"]:
        raise RuntimeError("userinfo names another subject than the ID token")
    # A refresh through Authlib's session, authenticated as the code redemption was.
    with OAuth2Session(
        a["client_id"],
        secret,
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
        timeout=TIMEOUT,
    ) as session:
        refreshed = session.refresh_token(
            metadata["token_endpoint"], refresh_token=token["refresh_token"]
        )
    if not refreshed.get("access_token"):
        raise RuntimeError("the refresh answered no access token")
    print(
        json.dumps(
            {
                "library": "authlib",
                "sub": claims["sub"],
                "id_token_validated": True,
                "id_token_alg": json.loads(base64.urlsafe_b64decode(token["id_token"].split(".")[0] + "=="))["alg"],
                "nonce_checked": claims.get("nonce") == start["nonce"],
                "at_hash_checked": "at_hash" in claims,
                "consent_page": consented,
                "refreshed": True,
                "preferred_username": userinfo.get("preferred_username"),
                "email": userinfo.get("email"),
                "userinfo_sub": userinfo["sub"],
            }
        )
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure is the test's failure
        print(f"authlib relying party failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
