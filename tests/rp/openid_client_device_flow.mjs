// A CLI built on openid-client (v6) signs in with the device authorization grant (RFC 8628)
// against tokend.
//
// openid-client finds the device authorization endpoint by OpenID Connect Discovery, asks for a
// device code (initiateDeviceAuthorization), and polls the token endpoint at the interval the
// server asks for, backing off on slow_down (pollDeviceAuthorizationGrant); it validates the ID
// token of the answer (iss, aud, exp, iat; and, with non-repudiation checks on, its signature
// from the JWKS), then the CLI calls userinfo and refreshes once.
//
// The person with the browser is played by whoever runs the script: it prints the device
// authorization answer as one JSON line on stdout ({"user_code", "verification_uri",
// "verification_uri_complete", "expires_in", "interval"}) and waits; once the code is approved
// (or denied) it prints a JSON summary line and exits 0 (approved) or 3 (access denied);
// anything else exits 1.
//
// Usage: node openid_client_device_flow.mjs ISSUER CLIENT_ID SCOPE. NODE_PATH is not read by ES
// modules: the library is loaded from RP_NODE_MODULES when set.

import path from "node:path";
import { pathToFileURL } from "node:url";

async function library() {
  const dir = process.env.RP_NODE_MODULES;
  if (!dir) return import("openid-client");
  const entry = path.join(dir, "openid-client", "build", "index.js");
  return import(pathToFileURL(entry).href);
}

async function main() {
  const [issuerArg, clientId, scope] = process.argv.slice(2);
  if (!issuerArg || !clientId || scope === undefined) {
    throw new Error("usage: openid_client_device_flow.mjs ISSUER CLIENT_ID SCOPE");
  }
  const client = await library();
  const issuer = issuerArg.replace(/\/$/, "");
  // A CLI is a public client (RFC 8252 §8.4): client_id only.
  const config = await client.discovery(new URL(issuer), clientId, undefined, client.None(), {
    execute: [client.allowInsecureRequests],
  });
  client.enableNonRepudiationChecks(config);
  const server = config.serverMetadata();
  if (server.issuer !== issuer) throw new Error(`discovery names issuer ${server.issuer}`);

  const started = await client.initiateDeviceAuthorization(config, { scope });
  console.log(
    JSON.stringify({
      user_code: started.user_code,
      verification_uri: started.verification_uri,
      verification_uri_complete: started.verification_uri_complete,
      expires_in: started.expires_in,
      interval: started.interval,
    }),
  );

  let tokens;
  try {
    tokens = await client.pollDeviceAuthorizationGrant(config, started);
  } catch (e) {
    if (e?.error === "access_denied") {
      console.log(JSON.stringify({ library: "openid-client", denied: true }));
      process.exit(3);
    }
    throw e;
  }
  const claims = tokens.claims();
  const summary = {
    library: "openid-client",
    approved: true,
    scope: tokens.scope,
    token_type: tokens.token_type,
    id_token_validated: Boolean(claims),
  };
  if (claims) {
    const header = JSON.parse(Buffer.from(tokens.id_token.split(".")[0], "base64url").toString());
    summary.sub = claims.sub;
    summary.id_token_alg = header.alg;
    const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
    summary.preferred_username = userinfo.preferred_username;
  }
  if (tokens.refresh_token) {
    const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
    if (!refreshed.access_token) throw new Error("the refresh answered no access token");
    summary.refreshed = true;
  }
  console.log(JSON.stringify(summary));
}

main().catch((e) => {
  console.error(`openid-client device flow failed: ${e?.name}: ${e?.message}`);
  if (e?.cause) console.error("cause:", e.cause);
  process.exit(1);
});
