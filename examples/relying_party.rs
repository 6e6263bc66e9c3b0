//! A web app that signs people in through tokend with the authorization code flow and PKCE
//! (RFC 6749 §4.1, RFC 7636, OpenID Connect Core 1.0 §3.1) and calls a resource server
//! (`examples/resource_server.rs`) with the access token. See docs/authorize.md.
//!
//! ```text
//! cargo run --example relying_party -- --issuer http://localhost:5000 --client-id demo-rp
//! ```
//!
//! Then open <http://127.0.0.1:8081/>. The client must be registered with the redirect URI
//! `http://{listen}/callback` and the post-logout redirect URI `http://{listen}/` (README,
//! "Browser and app sign-in"). Sessions, tokens and pending sign-ins live in this process's
//! memory, keyed by a random cookie; the browser never sees a token. (Nothing expires them:
//! a real app would, and would keep them in a shared store to run more than one instance.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use tokio::net::TcpListener;

/// Command line (each flag also read from the environment).
#[derive(Debug, Parser)]
#[command(about = "A web app signing in through tokend and calling a resource server")]
pub struct Args {
    /// The issuer URL, exactly as tokend's TOKEND_ISSUER.
    #[arg(long, env = "RP_ISSUER", default_value = "http://localhost:5000")]
    pub issuer: String,
    /// This app's client id at tokend.
    #[arg(long, env = "RP_CLIENT_ID", default_value = "demo-rp")]
    pub client_id: String,
    /// The client secret of a confidential client; without it the app is a public client.
    #[arg(long, env = "RP_CLIENT_SECRET")]
    pub client_secret: Option<String>,
    /// Where to listen; the redirect URI is `http://{listen}/callback`.
    #[arg(long, env = "RP_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The resource server's protected URL.
    #[arg(long, env = "RP_API", default_value = "http://127.0.0.1:8080/hello")]
    pub api: String,
}

/// What the app remembers about a browser (the value of its `rp_session` cookie).
enum Session {
    /// Between `/login` and `/callback`: what the answer must match.
    Pending {
        state: String,
        nonce: String,
        verifier: String,
    },
    SignedIn {
        id_token: String,
        access_token: String,
        name: String,
        email: String,
    },
}

/// The app: the provider's metadata (OpenID Connect Discovery 1.0) and the sessions.
pub struct RelyingParty {
    args: Args,
    meta: Value,
    http: reqwest::Client,
    sessions: Mutex<HashMap<String, Session>>,
}

type Reply = Response<Full<Bytes>>;

/// 32 random bytes, base64url: state, nonce, PKCE verifier (RFC 7636 §4.1), session ids.
fn random() -> String {
    let mut b = [0u8; 32];
    let _ = SystemRandom::new().fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, body: &str) -> Reply {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>Relying party</title><h1>Relying party</h1>{body}"
    );
    let mut res = Response::new(Full::new(Bytes::from(html)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

fn redirect(location: &str, cookie: Option<String>) -> Reply {
    let mut res = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location);
    if let Some(c) = cookie {
        res = res.header(header::SET_COOKIE, c);
    }
    res.body(Full::default())
        .unwrap_or_else(|_| page(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect"))
}

fn meta<'a>(meta: &'a Value, name: &str) -> &'a str {
    meta[name].as_str().unwrap_or_default()
}

impl RelyingParty {
    /// Reads `{issuer}/.well-known/openid-configuration`; its `issuer` must be the one asked
    /// for (OpenID Connect Discovery 1.0 §4.3).
    pub async fn discover(args: Args) -> Result<Self, String> {
        let http = reqwest::Client::new();
        let url = format!("{}/.well-known/openid-configuration", args.issuer);
        let meta: Value = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("discovery at {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("discovery at {url}: {e}"))?;
        if meta["issuer"] != args.issuer.as_str() {
            return Err(format!("{url} names another issuer: {}", meta["issuer"]));
        }
        let sessions = Mutex::new(HashMap::new());
        Ok(Self {
            args,
            meta,
            http,
            sessions,
        })
    }

    fn redirect_uri(&self) -> String {
        format!("http://{}/callback", self.args.listen)
    }

    /// Answers one request of the browser whose `rp_session` cookie is `sid`.
    async fn handle(
        &self,
        path: &str,
        query: HashMap<String, String>,
        sid: Option<String>,
    ) -> Reply {
        let sid = sid.unwrap_or_default();
        match path {
            "/" => self.home(&sid),
            "/login" => self.login(),
            "/callback" => match self.callback(&sid, &query).await {
                Ok(()) => redirect("/", None),
                Err(e) => page(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "<p>Sign-in failed: {}</p><a href=\"/\">Back</a>",
                        escape(&e)
                    ),
                ),
            },
            "/api" => self.call_api(&sid).await,
            "/logout" => self.logout(&sid),
            _ => page(StatusCode::NOT_FOUND, "<p>Not found</p>"),
        }
    }

    fn home(&self, sid: &str) -> Reply {
        match self.sessions.lock().ok().as_ref().and_then(|s| s.get(sid)) {
            Some(Session::SignedIn { name, email, .. }) => page(
                StatusCode::OK,
                &format!(
                    "<p>Signed in as <b>{}</b> ({})</p><p><a href=\"/api\">Call the API</a></p>\
                     <p><a href=\"/logout\">Sign out</a></p>",
                    escape(name),
                    escape(email)
                ),
            ),
            _ => page(StatusCode::OK, "<p><a href=\"/login\">Sign in</a></p>"),
        }
    }

    /// Starts a sign-in under a new session id: state (CSRF, RFC 6749 §10.12), nonce (OpenID
    /// Connect Core §3.1.2.1) and the PKCE verifier with its S256 challenge (RFC 7636 §4.2).
    fn login(&self) -> Reply {
        let (sid, state, nonce, verifier) = (random(), random(), random(), random());
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", self.args.client_id.as_str()),
            ("redirect_uri", self.redirect_uri().as_str()),
            ("scope", "openid profile email"),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .unwrap_or_default();
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(
                sid.clone(),
                Session::Pending {
                    state,
                    nonce,
                    verifier,
                },
            );
        }
        let location = format!("{}?{query}", meta(&self.meta, "authorization_endpoint"));
        redirect(
            &location,
            Some(format!("rp_session={sid}; HttpOnly; SameSite=Lax; Path=/")),
        )
    }

    /// The authorization response: checks `state` and `iss` (RFC 9207 §2.4), redeems the code
    /// with the verifier (RFC 7636 §4.5), verifies the ID token and keeps the tokens.
    async fn callback(&self, sid: &str, q: &HashMap<String, String>) -> Result<(), String> {
        // A pending sign-in is used once, whatever the outcome.
        let pending = self
            .sessions
            .lock()
            .ok()
            .and_then(|mut s| match s.get(sid) {
                Some(Session::Pending { .. }) => s.remove(sid),
                _ => None,
            });
        let Some(Session::Pending {
            state,
            nonce,
            verifier,
        }) = pending
        else {
            return Err("no sign-in in progress".into());
        };
        if q.get("state") != Some(&state) {
            return Err("state does not match".into());
        }
        if q.get("iss").map(String::as_str) != Some(self.args.issuer.as_str()) {
            return Err("iss is not the issuer".into());
        }
        if let Some(error) = q.get("error") {
            return Err(format!(
                "{error}: {}",
                q.get("error_description").map_or("", String::as_str)
            ));
        }
        let code = q.get("code").ok_or("no code")?;
        let redirect_uri = self.redirect_uri();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", verifier.as_str()),
        ];
        let mut req = self.http.post(meta(&self.meta, "token_endpoint"));
        match &self.args.client_secret {
            // client_secret_basic (RFC 6749 §2.3.1).
            Some(secret) => req = req.basic_auth(&self.args.client_id, Some(secret)),
            None => form.push(("client_id", self.args.client_id.as_str())),
        }
        let res = req.form(&form).send().await.map_err(|e| e.to_string())?;
        let status = res.status();
        let tokens: Value = res.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "token endpoint answered {status}: {}",
                tokens["error"]
            ));
        }
        let id_token = tokens["id_token"].as_str().ok_or("no id_token")?;
        let claims = self.verify_id_token(id_token, &nonce).await?;
        let session = Session::SignedIn {
            id_token: id_token.to_string(),
            access_token: tokens["access_token"]
                .as_str()
                .ok_or("no access_token")?
                .to_string(),
            name: meta(&claims, "preferred_username").to_string(),
            email: meta(&claims, "email").to_string(),
        };
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(sid.to_string(), session);
        }
        Ok(())
    }

    /// OpenID Connect Core §3.1.3.7: `typ` `JWT` (docs/authorize.md, "ID tokens"), the
    /// signature with the JWKS key named by `kid` in the algorithm that key declares, `iss`,
    /// `aud` = the client id, `exp`, and the `nonce` of this sign-in. The JWKS is read at each
    /// sign-in, so rotated keys need no cache logic here.
    async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<Value, String> {
        let head = decode_header(token).map_err(|e| e.to_string())?;
        if head.typ.as_deref() != Some("JWT") {
            return Err("not an ID token".into());
        }
        let jwks: JwkSet = self
            .http
            .get(meta(&self.meta, "jwks_uri"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let jwk = jwks
            .find(head.kid.as_deref().unwrap_or_default())
            .ok_or("unknown kid")?;
        let declared = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
        if !matches!(head.alg, Algorithm::EdDSA | Algorithm::RS256)
            || declared != Some(format!("{:?}", head.alg))
        {
            return Err("unexpected algorithm".into());
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let mut v = Validation::new(head.alg);
        v.set_issuer(&[&self.args.issuer]);
        v.set_audience(&[&self.args.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = decode::<Value>(token, &key, &v)
            .map_err(|e| e.to_string())?
            .claims;
        if claims["nonce"] != nonce {
            return Err("nonce does not match".into());
        }
        Ok(claims)
    }

    /// Calls the resource server with the access token (RFC 6750 §2.1) and shows its answer.
    async fn call_api(&self, sid: &str) -> Reply {
        let access = match self.sessions.lock().ok().as_ref().and_then(|s| s.get(sid)) {
            Some(Session::SignedIn { access_token, .. }) => access_token.clone(),
            _ => return redirect("/", None),
        };
        let answer = match self
            .http
            .get(&self.args.api)
            .bearer_auth(access)
            .send()
            .await
        {
            Ok(res) => format!("{}\n{}", res.status(), res.text().await.unwrap_or_default()),
            Err(e) => format!("cannot reach {}: {e}", self.args.api),
        };
        page(
            StatusCode::OK,
            &format!(
                "<p>{} answered:</p><pre>{}</pre><a href=\"/\">Back</a>",
                escape(&self.args.api),
                escape(&answer)
            ),
        )
    }

    /// RP-Initiated Logout 1.0 §2: forgets the session and sends the browser to the
    /// `end_session_endpoint` with the ID token as hint, to come back to `/`.
    fn logout(&self, sid: &str) -> Reply {
        let session = self.sessions.lock().ok().and_then(|mut s| s.remove(sid));
        let Some(Session::SignedIn { id_token, .. }) = session else {
            return redirect("/", None);
        };
        let query = serde_urlencoded::to_string([
            ("id_token_hint", id_token.as_str()),
            ("client_id", self.args.client_id.as_str()),
            (
                "post_logout_redirect_uri",
                &format!("http://{}/", self.args.listen),
            ),
        ])
        .unwrap_or_default();
        redirect(
            &format!("{}?{query}", meta(&self.meta, "end_session_endpoint")),
            None,
        )
    }
}

/// The value of the `rp_session` cookie.
fn session_cookie<B>(req: &Request<B>) -> Option<String> {
    let cookies = req.headers().get(header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .find_map(|c| c.trim().strip_prefix("rp_session="))
        .map(str::to_string)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    rp: Arc<RelyingParty>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let rp = rp.clone();
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let rp = rp.clone();
            async move {
                let query = serde_urlencoded::from_str(req.uri().query().unwrap_or_default())
                    .unwrap_or_default();
                let sid = session_cookie(&req);
                Ok::<_, Infallible>(rp.handle(req.uri().path(), query, sid).await)
            }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listen = args.listen;
    let rp = match RelyingParty::discover(args).await {
        Ok(rp) => Arc::new(rp),
        Err(e) => {
            eprintln!("relying_party: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relying_party: cannot bind {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("relying_party: open http://{listen}/");
    serve(listener, rp, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    ExitCode::SUCCESS
}
