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
// NODE_PATH is not read by ES modules: the library is loaded from RP_NODE_MODULES when set.

import path from "node:path";
import { pathToFileURL } from "node:url";

const NAMES = ["ISSUER", "CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI", "USERNAME", "PASSWORD"];

function args() {
  const given = process.argv.slice(2);
  if (given.length && given.length !== NAMES.length) {
    throw new Error(`usage: openid_client_code_flow.mjs ${NAMES.join(" ")}`);
  }
  const values = given.length ? given : NAMES.map((n) => process.env[`RP_${n}`] ?? "");
  return Object.fromEntries(NAMES.map((n, i) => [n.toLowerCase(), values[i]]));
}

async function library() {
  const dir = process.env.RP_NODE_MODULES;
  if (!dir) return import("openid-client");
  const entry = path.join(dir, "openid-client", "build", "index.js");
  return import(pathToFileURL(entry).href);
}

/** A tiny cookie jar: name=value pairs of the Set-Cookie headers, for one origin. */
class Jar {
  constructor() {
    this.cookies = new Map();
  }
  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair] = line.split(";");
      const eq = pair.indexOf("=");
      this.cookies.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
  }
  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
  }
}

/** The fields (hidden inputs and named buttons) of the form holding `field`. */
function formWith(html, field) {
  for (const match of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/g)) {
    const action = /action="([^"]*)"/.exec(match[1])?.[1] ?? "";
    const fields = {};
    for (const tag of match[2].matchAll(/<(?:input|button)\b([^>]*)>/g)) {
      const name = /name="([^"]*)"/.exec(tag[1])?.[1];
      if (name && !(name in fields)) fields[name] = /value="([^"]*)"/.exec(tag[1])?.[1] ?? "";
    }
    if (field in fields) return { action, fields };
  }
  throw new Error(`no form with a ${field} field on the page`);
}

/** Plays the browser from the authorization URL to the redirect to the client; answers that
 * redirect's URL without following it. */
async function browse(start, redirectUri, username, password) {
  const jar = new Jar();
  let url = new URL(start);
  let body;
  let consented = false;
  for (let step = 0; step < 10; step++) {
    const res = await fetch(url, {
      method: body ? "POST" : "GET",
      body,
      redirect: "manual",
      headers: {
        cookie: jar.header(),
        ...(body ? { "content-type": "application/x-www-form-urlencoded" } : {}),
      },
    });
    jar.store(res);
    if (res.status === 302 || res.status === 303) {
      const target = new URL(res.headers.get("location"), url);
      if (`${target.origin}${target.pathname}` === redirectUri) return { target, consented };
      url = target;
      body = undefined;
      continue;
    }
    const html = await res.text();
    if (res.status !== 200) throw new Error(`${url} answered ${res.status}: ${html.slice(0, 500)}`);
    let form;
    if (url.pathname === "/login") {
      form = formWith(html, "password");
      Object.assign(form.fields, { username, password });
    } else if (url.pathname === "/consent") {
      form = formWith(html, "decision");
      form.fields.decision = "allow";
      consented = true;
    } else {
      throw new Error(`unexpected page ${url}`);
    }
    if (!form.fields.csrf_token) throw new Error(`no csrf_token on ${url.pathname}`);
    url = new URL(form.action || url.pathname, url);
    body = new URLSearchParams(form.fields).toString();
  }
  throw new Error("too many steps");
}

async function main() {
  const a = args();
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
