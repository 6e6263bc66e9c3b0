// A relying party built on openid-client (v6) signs in through a pushed authorization request
// (RFC 9126) against tokend.
//
// openid-client finds `pushed_authorization_request_endpoint` by OpenID Connect Discovery and
// `buildAuthorizationUrlWithPAR` pushes the request (PKCE S256, state, nonce) with the client's
// credentials, checks the 201 answer, and builds the authorization URL from `client_id` and the
// `request_uri` alone. The browser (rp_browser.mjs) signs in there; openid-client then checks the
// callback (state, iss per RFC 9207), redeems the code and validates the ID token (with
// non-repudiation checks on, its signature from the JWKS too), and calls userinfo. The script
// also checks what tokend promises around it (docs/authorize.md, "Pushed authorization
// requests"): the request URI works once, and a client registered with
// `require_pushed_authorization_requests` is refused a plain authorization request. Prints a
// JSON summary and exits 0; anything else fails.
//
// Usage: node openid_client_par_flow.mjs ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI USERNAME
// PASSWORD (an empty CLIENT_SECRET makes a public client), or the RP_* variables of
// rp_browser.mjs.

import { args, browse, library } from "./rp_browser.mjs";

const REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:";

async function main() {
  const a = args("openid_client_par_flow.mjs");
  const client = await library();
  const issuer = a.issuer.replace(/\/$/, "");
  const auth = a.client_secret ? client.ClientSecretBasic(a.client_secret) : client.None();
  // tokend listens on plain http on the loopback address in the test.
  const config = await client.discovery(new URL(issuer), a.client_id, undefined, auth, {
    execute: [client.allowInsecureRequests],
  });
  client.enableNonRepudiationChecks(config);
  const server = config.serverMetadata();
  if (server.pushed_authorization_request_endpoint !== `${issuer}/oauth/par`) {
    throw new Error(`discovery names no PAR endpoint: ${server.pushed_authorization_request_endpoint}`);
  }

  const verifier = client.randomPKCECodeVerifier();
  const parameters = {
    redirect_uri: a.redirect_uri,
    scope: "openid profile email",
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    state: client.randomState(),
    nonce: client.randomNonce(),
  };

  // This client must push: the plain authorization URL is sent back with invalid_request.
  const plain = await fetch(client.buildAuthorizationUrl(config, parameters), {
    redirect: "manual",
  });
  const refusal = new URL(plain.headers.get("location") ?? "about:blank");
  const plainRefused =
    plain.status === 303 &&
    `${refusal.origin}${refusal.pathname}` === a.redirect_uri &&
    refusal.searchParams.get("error") === "invalid_request" &&
    refusal.searchParams.get("state") === parameters.state;

  const start = await client.buildAuthorizationUrlWithPAR(config, parameters);
  const sent = [...start.searchParams.keys()].sort();
  const requestUri = start.searchParams.get("request_uri") ?? "";
  if (!requestUri.startsWith(REQUEST_URI_PREFIX)) {
    throw new Error(`not a request URI of RFC 9126: ${requestUri}`);
  }
  const { target: callback, consented } = await browse(
    start,
    a.redirect_uri,
    a.username,
    a.password,
  );
  const tokens = await client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: verifier,
    expectedState: parameters.state,
    expectedNonce: parameters.nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  if (!claims) throw new Error("no ID token claims");
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);

  // The request URI was used: the same URL again is an error page, never a redirect.
  const again = await fetch(start, { redirect: "manual" });
  const singleUse = again.status === 400 && !again.headers.get("location");

  const header = JSON.parse(Buffer.from(tokens.id_token.split(".")[0], "base64url").toString());
  console.log(
    JSON.stringify({
      library: "openid-client",
      flow: "par",
      authorization_url_parameters: sent,
      plain_request_refused: plainRefused,
      request_uri_single_use: singleUse,
      sub: claims.sub,
      id_token_validated: true,
      id_token_alg: header.alg,
      nonce_checked: claims.nonce === parameters.nonce,
      consent_page: consented,
      preferred_username: userinfo.preferred_username,
      email: userinfo.email,
      userinfo_sub: userinfo.sub,
    }),
  );
}

main().catch((e) => {
  console.error(`openid-client PAR relying party failed: ${e?.name}: ${e?.message}`);
  if (e?.cause) console.error("cause:", e.cause);
  process.exit(1);
});
