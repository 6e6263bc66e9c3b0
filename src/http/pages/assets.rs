//! The stylesheet and the form-post script of the hosted pages: compiled into the binary and
//! served from memory at paths that carry a hash of their content
//! (`/assets/tokend.<10 hex digits of SHA-256>.css`). A build that changes a file changes its
//! path, so every path can be cached for a year as `immutable` (RFC 8246); the pages themselves
//! are never cached and always name the current paths.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;

use crate::http::state::AppState;
use crate::http::{ApiError, ApiResult};

/// Where the route serves assets; the route table holds `/assets/{name}`.
const PREFIX: &str = "/assets/";

/// `Cache-Control` of every asset: a hashed path never changes its content (RFC 8246).
pub const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The `Content-Type` of the stylesheet.
pub const CSS: &str = "text/css; charset=utf-8";

/// The `Content-Type` of the script (RFC 9239 §6).
pub const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// One file served from memory.
#[derive(Debug)]
pub(crate) struct Asset {
    /// `tokend.0123456789.css`: the stem, the first 10 hex digits of the SHA-256 of the body,
    /// the extension.
    name: String,
    /// `/assets/` and the name: what the pages link to.
    path: String,
    content_type: &'static str,
    body: Bytes,
}

impl Asset {
    fn new(stem: &str, extension: &str, content_type: &'static str, body: &'static [u8]) -> Asset {
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        let hash = hex::encode(&digest.as_ref()[..5]);
        let name = format!("{stem}.{hash}.{extension}");
        Asset {
            path: format!("{PREFIX}{name}"),
            name,
            content_type,
            body: Bytes::from_static(body),
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    #[cfg(test)]
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }
}

/// The stylesheet of every page.
pub(crate) static STYLESHEET: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("tokend", "css", CSS, include_bytes!("assets/tokend.css")));

/// The script that submits the form of the form-post page as soon as it loads (the page has a
/// button for browsers without scripts).
pub(crate) static FORM_POST_SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "form-post",
        "js",
        JAVASCRIPT,
        include_bytes!("assets/form-post.js"),
    )
});

/// The path of the stylesheet, `/assets/tokend.<hash>.css`.
pub fn stylesheet_path() -> &'static str {
    STYLESHEET.path()
}

/// The path of the form-post script, `/assets/form-post.<hash>.js`.
pub fn form_post_script_path() -> &'static str {
    FORM_POST_SCRIPT.path()
}

/// The asset called `name`, if there is one: a comparison with the names in memory, never a
/// file lookup.
pub(crate) fn find(name: &str) -> Option<&'static Asset> {
    [&*STYLESHEET, &*FORM_POST_SCRIPT]
        .into_iter()
        .find(|a| a.name == name)
}

/// `GET /assets/{name}`: the asset with its type and the immutable `Cache-Control`; 404 for
/// any other name (an old hash included).
pub fn serve<B>(_state: &AppState, req: &Request<B>) -> ApiResult {
    let asset = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .and_then(find)
        .ok_or(ApiError::NotFound)?;
    let mut res = Response::new(Full::new(asset.body.clone()));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_carry_the_hash_of_the_content() {
        for (asset, stem, ext) in [
            (&*STYLESHEET, "tokend", "css"),
            (&*FORM_POST_SCRIPT, "form-post", "js"),
        ] {
            let digest = ring::digest::digest(&ring::digest::SHA256, asset.body());
            let hash = &hex::encode(digest.as_ref())[..10];
            assert_eq!(asset.path(), format!("/assets/{stem}.{hash}.{ext}"));
            assert!(crate::http::routes::find(asset.path()).is_some());
            assert!(find(&asset.name).is_some());
        }
        assert_eq!(stylesheet_path(), STYLESHEET.path());
        assert!(find("tokend.css").is_none());
        assert!(find("tokend.0000000000.css").is_none());
    }
}
