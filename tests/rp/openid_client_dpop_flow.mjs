// A public client built on openid-client (v6) gets DPoP-bound tokens from tokend (RFC 9449).
//
// openid-client makes an ES256 key pair (randomDPoPKeyPair) and a DPoP handle (getDPoPHandle)
// that signs a proof for every request and keeps the nonces the server hands out. The script
// runs the authorization code flow with `dpop_jkt` (the code is bound to the key, RFC 9449 §10),
// redeems the code with a proof, calls userinfo with `Authorization: DPoP` and a proof carrying
// `ath`, and refreshes with a proof. tokend runs with TOKEND_DPOP_NONCE=on, so the first token
// request is answered `use_dpop_nonce` and openid-client retries it with the nonce of the
// `DPoP-Nonce` header. A refresh without the key is then tried and must be refused: a public
// client's refresh token is bound to its key. Prints a JSON summary and exits 0; anything else
// fails.
//
// Usage: node openid_client_dpop_flow.mjs ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI USERNAME
// PASSWORD (CLIENT_SECRET empty: a public client), or the RP_* variables of rp_browser.mjs.

import { args, browse, library } from "./rp_browser.mjs";

function payload(jwt) {
  return JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
}

async function main() {
  const a = args("openid_client_dpop_flow.mjs");
  const client = await library();
  const issuer = a.issuer.replace(/\/$/, "");
  const auth = a.client_secret ? client.ClientSecretBasic(a.client_secret) : client.None();
  const config = await client.discovery(new URL(issuer), a.client_id, undefined, auth, {
    execute: [client.allowInsecureRequests],
  });
  client.enableNonRepudiationChecks(config);
  const server = config.serverMetadata();
  if (!server.dpop_signing_alg_values_supported?.includes("ES256")) {
    throw new Error(`discovery lists no ES256 for DPoP: ${server.dpop_signing_alg_values_supported}`);
  }
  // Every answer tokend gives, to see the nonce round trip happen.
  const answers = [];
  config[client.customFetch] = async (url, options) => {
    const res = await fetch(url, options);
    let error;
    if (res.status >= 400) {
      try {
        error = (await res.clone().json()).error;
      } catch {
        error = undefined;
      }
    }
    answers.push({
      url: String(url),
      status: res.status,
      error,
      nonce: res.headers.has("dpop-nonce"),
      challenge: res.headers.get("www-authenticate"),
    });
    return res;
  };

  const keyPair = await client.randomDPoPKeyPair("ES256");
  const DPoP = client.getDPoPHandle(config, keyPair);
  const jkt = await DPoP.calculateThumbprint();

  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const start = client.buildAuthorizationUrl(config, {
    redirect_uri: a.redirect_uri,
    scope: "openid profile email",
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    state,
    nonce,
    dpop_jkt: jkt,
  });
  const { target: callback } = await browse(start, a.redirect_uri, a.username, a.password);
  const tokens = await client.authorizationCodeGrant(
    config,
    callback,
    { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true },
    undefined,
    { DPoP },
  );
  const claims = tokens.claims();
  if (!claims) throw new Error("no ID token claims");
  const nonceAsked = answers.some(
    (r) => r.url.endsWith("/oauth/token") && r.status === 400 && r.error === "use_dpop_nonce" && r.nonce,
  );

  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub, { DPoP });
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token, undefined, { DPoP });

  // The refresh token is bound: without the key it is refused.
  let refusedWithoutKey = false;
  try {
    await client.refreshTokenGrant(config, refreshed.refresh_token);
  } catch (e) {
    refusedWithoutKey = e?.error === "invalid_dpop_proof";
  }
  // The access token is bound: as a bearer token userinfo refuses it.
  let bearerRefused = false;
  try {
    await client.fetchUserInfo(config, refreshed.access_token, claims.sub);
  } catch {
    bearerRefused = true;
  }
  // And with DPoP it still works after the refresh.
  const again = await client.fetchUserInfo(config, refreshed.access_token, claims.sub, { DPoP });

  console.log(
    JSON.stringify({
      library: "openid-client",
      flow: "dpop",
      token_type: tokens.token_type,
      refreshed_token_type: refreshed.token_type,
      jkt,
      cnf_jkt: payload(tokens.access_token).cnf?.jkt,
      refreshed_cnf_jkt: payload(refreshed.access_token).cnf?.jkt,
      nonce_asked_and_retried: nonceAsked,
      sub: claims.sub,
      userinfo_sub: userinfo.sub,
      userinfo_after_refresh_sub: again.sub,
      refresh_without_key_refused: refusedWithoutKey,
      bearer_use_refused: bearerRefused,
    }),
  );
}

main().catch((e) => {
  console.error(`openid-client DPoP flow failed: ${e?.name}: ${e?.message}`);
  if (e?.cause) console.error("cause:", e.cause);
  process.exit(1);
});
