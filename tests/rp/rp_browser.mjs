// What the openid-client relying-party scripts share: their arguments, the library, and a
// browser played with plain HTTP through tokend's hosted sign-in and consent forms with their
// CSRF tokens (docs/authorize.md).

import path from "node:path";
import { pathToFileURL } from "node:url";

const NAMES = ["ISSUER", "CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI", "USERNAME", "PASSWORD"];

/** The script's arguments (or RP_* variables), by lower-case name; `script` names the usage. */
export function args(script) {
  const given = process.argv.slice(2);
  if (given.length && given.length !== NAMES.length) {
    throw new Error(`usage: ${script} ${NAMES.join(" ")}`);
  }
  const values = given.length ? given : NAMES.map((n) => process.env[`RP_${n}`] ?? "");
  return Object.fromEntries(NAMES.map((n, i) => [n.toLowerCase(), values[i]]));
}

/** openid-client, from RP_NODE_MODULES when set (ES modules do not read NODE_PATH). */
export async function library() {
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
 * redirect's URL without following it, and whether a consent page was answered. */
export async function browse(start, redirectUri, username, password) {
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
