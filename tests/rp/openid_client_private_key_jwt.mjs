// A service built on openid-client (v6) authenticates to tokend with private_key_jwt
// (RFC 7523 §2.2).
//
// The client's P-256 private key is imported into WebCrypto from a JWK file; openid-client's
// PrivateKeyJwt signs a fresh assertion for each request (ES256, the key's `kid`, `aud` the
// issuer, `client_id` in the body too). From discovery, the script gets a client_credentials
// token, introspects it, revokes it and introspects it again. Prints a JSON summary and exits
// 0; anything else fails.
//
// Usage: node openid_client_private_key_jwt.mjs ISSUER CLIENT_ID PRIVATE_JWK_FILE SCOPE

import { readFileSync } from "node:fs";

import { library } from "./rp_browser.mjs";

async function main() {
  const given = process.argv.slice(2);
  if (given.length !== 4) {
    throw new Error("usage: openid_client_private_key_jwt.mjs ISSUER CLIENT_ID PRIVATE_JWK_FILE SCOPE");
  }
  const [issuer, clientId, jwkFile, scope] = given;
  const client = await library();
  const jwk = JSON.parse(readFileSync(jwkFile, "utf8"));
  const key = await crypto.subtle.importKey(
    "jwk",
    jwk,
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["sign"],
  );
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    undefined,
    client.PrivateKeyJwt({ key, kid: jwk.kid }),
    { execute: [client.allowInsecureRequests] },
  );
  const server = config.serverMetadata();
  const tokens = await client.clientCredentialsGrant(config, { scope });
  const before = await client.tokenIntrospection(config, tokens.access_token);
  await client.tokenRevocation(config, tokens.access_token);
  const after = await client.tokenIntrospection(config, tokens.access_token);
  console.log(
    JSON.stringify({
      library: "openid-client",
      access_token: tokens.access_token,
      token_type: tokens.token_type,
      scope: tokens.scope,
      active: before.active,
      introspected_client_id: before.client_id,
      active_after_revocation: after.active,
      methods_supported: server.token_endpoint_auth_methods_supported,
    }),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
