"""A service built on Authlib authenticates to tokend with private_key_jwt (RFC 7523 §2.2).

Authlib's PrivateKeyJWT signs a fresh assertion for every request of an OAuth2Session (RS256,
its default; `aud` the token endpoint; `exp` an hour ahead, Authlib's default; the key's `kid`
in the header): a client_credentials token, an introspection of it, its revocation, and a
second introspection. The endpoints come from discovery, which must list private_key_jwt.
Prints a JSON summary and exits 0; anything else fails.

Usage: authlib_private_key_jwt.py ISSUER CLIENT_ID PRIVATE_KEY_PEM_FILE KID SCOPE
"""

import json
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT

TIMEOUT = 30


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    issuer, client_id, pem_file, kid, scope = sys.argv[1:]
    meta = requests.get(
        issuer.rstrip("/") + "/.well-known/oauth-authorization-server", timeout=TIMEOUT
    )
    meta.raise_for_status()
    meta = meta.json()
    for endpoint in ("token", "revocation", "introspection"):
        methods = meta[f"{endpoint}_endpoint_auth_methods_supported"]
        if "private_key_jwt" not in methods:
            raise SystemExit(f"discovery lists no private_key_jwt for {endpoint}: {methods}")
    token_endpoint = meta["token_endpoint"]
    with open(pem_file, "rb") as f:
        private_key = f.read()

    session = OAuth2Session(
        client_id,
        private_key,
        token_endpoint_auth_method="private_key_jwt",
        revocation_endpoint_auth_method="private_key_jwt",
        scope=scope,
    )
    session.register_client_auth_method(
        PrivateKeyJWT(token_endpoint, headers={"kid": kid})
    )
    token = session.fetch_token(
        token_endpoint, grant_type="client_credentials", timeout=TIMEOUT
    )
    access_token = token["access_token"]

    def introspect():
        res = session.introspect_token(
            meta["introspection_endpoint"],
            token=access_token,
            token_type_hint="access_token",
            timeout=TIMEOUT,
        )
        res.raise_for_status()
        return res.json()

    before = introspect()
    revoked = session.revoke_token(
        meta["revocation_endpoint"],
        token=access_token,
        token_type_hint="access_token",
        timeout=TIMEOUT,
    )
    revoked.raise_for_status()
    after = introspect()
    print(
        json.dumps(
            {
                "library": "authlib",
                "access_token": access_token,
                "token_type": token.get("token_type"),
                "scope": token.get("scope"),
                "active": before.get("active"),
                "introspected_client_id": before.get("client_id"),
                "active_after_revocation": after.get("active"),
            }
        )
    )


if __name__ == "__main__":
    main()
