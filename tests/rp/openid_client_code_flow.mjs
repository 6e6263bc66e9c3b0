// A relying party built on openid-client (v6) runs the authorization code flow against tokend.
//
// openid-client finds the endpoints by OpenID Connect Discovery, builds the authorization URL
// with PKCE S256 (RFC 7636), state and nonce, checks the authorization response (state, and iss
// per RFC 9207), redeems the code, validates the ID token (iss, aud, azp, exp, iat, nonce; and,
// with non-repudiation checks on, its signature from the JWKS: OpenID Connect Core §3.1.3.7)
// and calls userinfo. The browser is played here with plain HTTP: the hosted sign-in and consent
// forms with their CSRF tokens (docs/authorize.md). Prints a JSON summary and exits 0; anything
// else fails.
//
// Usage: node openid_client_code_flow.mjs ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI USERNAME
// PASSWORD (an empty CLIENT_SECRET makes a public client). The same values may come from
// RP_ISSUER, RP_CLIENT_ID, RP_CLIENT_SECRET, RP_REDIRECT_URI, RP_USERNAME and RP_PASSWORD.
// NODE_PATH is not read by ES modules: the library is loaded from RP_NODE_MODULES when set
// (rp_browser.mjs, shared with openid_client_par_flow.mjs).

import { args, browse, library } from "./rp_browser.mjs";

async function main() {
  const a = args("openid_client_code_flow.mjs");
  const client = await library();
  const issuer = a.issuer.replace(/\/$/, "");
  const auth = a.client_secret ? client.ClientSecretBasic(a.client_secret) : client.None();
  // tokend listens on plain http on the loopback address in the test.
  const config = await client.discovery(new URL(issuer), a.client_id, undefined, auth, {
    execute: [client.allowInsecureRequests],
  });
  // Validate the ID token's signature with the JWKS too, not only its claims.
  client.enableNonRepudiationChecks(config);
  const server = config.serverMetadata();
  if (server.issuer !== issuer) throw new Error(`discovery names issuer ${server.issuer}`);

  const verifier = client.randomPKCECodeVerifier();
  const challenge = await client.calculatePKCECodeChallenge(verifier);
  const state = client.randomState();
  const nonce = client.randomNonce();
  const start = client.buildAuthorizationUrl(config, {
    redirect_uri: a.redirect_uri,
    scope: "openid profile email",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state,
    nonce,
  });

  const { target: callback, consented } = await browse(start, a.redirect_uri, a.username, a.password);
  const tokens = await client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: verifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  if (!claims) throw new Error("no ID token claims");
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  // A refresh: openid-client validates an ID token in its answer like the first one.
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  if (!refreshed.access_token) throw new Error("the refresh answered no access token");
  const header = JSON.parse(Buffer.from(tokens.id_token.split(".")[0], "base64url").toString());
  console.log(
    JSON.stringify({
      library: "openid-client",
      sub: claims.sub,
      id_token_validated: true,
      id_token_alg: header.alg,
      nonce_checked: claims.nonce === nonce,
      consent_page: consented,
      refreshed: true,
      preferred_username: userinfo.preferred_username,
      email: userinfo.email,
      userinfo_sub: userinfo.sub,
    }),
  );
}

main().catch((e) => {
  console.error(`openid-client relying party failed: ${e?.name}: ${e?.message}`);
  if (e?.cause) console.error("cause:", e.cause);
  process.exit(1);
});
