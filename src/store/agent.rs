//! What a refresh family keeps of its login's `User-Agent`: the product, its major version and
//! the system, in two bytes (docs/sessions.md, "What a family remembers of its login"). The
//! sessions list shows it as `Chrome 131 on Linux`; an agent naming neither a product nor a
//! system it knows is not kept.

/// The products an agent can name, by the index a family keeps (index 0: none known; at most
/// 32, in 5 bits).
const PRODUCTS: [&str; 17] = [
    "",
    "Edge",
    "Opera",
    "Samsung Internet",
    "Firefox",
    "Chrome",
    "Safari",
    "curl",
    "Wget",
    "Python",
    "Go",
    "OkHttp",
    "Node.js",
    "Java",
    "Postman",
    "Rust",
    "Dart",
];

/// Browser product tokens (RFC 9110 §10.1.5), checked in this order anywhere in the agent:
/// many agents name several (Edge says Chrome and Safari too, Chrome says Safari). Safari,
/// named by every WebKit browser, is the fallback (its version is in `Version/`).
const BROWSERS: [(&str, u8); 9] = [
    ("Edg/", 1),
    ("EdgA/", 1),
    ("EdgiOS/", 1),
    ("OPR/", 2),
    ("SamsungBrowser/", 3),
    ("FxiOS/", 4),
    ("Firefox/", 4),
    ("CriOS/", 5),
    ("Chrome/", 5),
];

/// Programs that name themselves first (`curl/8.5.0`), compared without case.
const PROGRAMS: [(&str, u8); 15] = [
    ("curl/", 7),
    ("wget/", 8),
    ("python-requests/", 9),
    ("python-httpx/", 9),
    ("python-urllib/", 9),
    ("python/", 9),
    ("aiohttp/", 9),
    ("go-http-client/", 10),
    ("okhttp/", 11),
    ("node-fetch", 12),
    ("undici", 12),
    ("axios/", 12),
    ("java/", 13),
    ("postmanruntime/", 14),
    ("reqwest/", 15),
];

/// The systems, from the comment of the agent's first product, by the index a family keeps (at
/// most 8, in 3 bits).
const SYSTEMS: [&str; 8] = [
    "", "Windows", "Android", "iOS", "iPadOS", "ChromeOS", "macOS", "Linux",
];

/// What names each system, checked in this order (Android agents say Linux too).
const SYSTEM_TOKENS: [(&str, u8); 8] = [
    ("Windows", 1),
    ("Android", 2),
    ("iPhone", 3),
    ("iPad", 4),
    ("CrOS", 5),
    ("Macintosh", 6),
    ("Mac OS X", 6),
    ("Linux", 7),
];

/// A login's agent as a family keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agent {
    product: u8,
    system: u8,
    /// The product's major version, capped at 255; 0 when unknown.
    major: u8,
}

impl Agent {
    /// What a family keeps of `ua`; `None` when it names no product or system known here.
    pub fn of(ua: &str) -> Option<Agent> {
        let major = |after: &str| -> u8 {
            let digits: String = after
                .chars()
                .take_while(char::is_ascii_digit)
                .take(6)
                .collect();
            digits
                .parse::<u32>()
                .map(|v| u8::try_from(v).unwrap_or(u8::MAX))
                .unwrap_or(0)
        };
        let lower = ua.trim_start().to_ascii_lowercase();
        let program = PROGRAMS.iter().find_map(|(token, product)| {
            lower.starts_with(token).then(|| {
                (
                    *product,
                    major(lower.get(token.len()..).unwrap_or_default()),
                )
            })
        });
        let browser = || {
            BROWSERS.iter().find_map(|(token, product)| {
                ua.find(token).map(|at| {
                    (
                        *product,
                        major(ua.get(at + token.len()..).unwrap_or_default()),
                    )
                })
            })
        };
        let safari = || {
            ua.contains("Safari/").then(|| {
                let version = ua
                    .find("Version/")
                    .map(|at| major(ua.get(at + "Version/".len()..).unwrap_or_default()))
                    .unwrap_or(0);
                (6, version)
            })
        };
        let (product, major) = program.or_else(browser).or_else(safari).unwrap_or((0, 0));
        let system = SYSTEM_TOKENS
            .iter()
            .find(|(token, _)| ua.contains(token))
            .map_or(0, |(_, s)| *s);
        (product != 0 || system != 0).then_some(Agent {
            product,
            system,
            major,
        })
    }

    /// The two bytes a family keeps: the product (5 bits) and the system (3 bits), then the
    /// major version.
    pub fn to_bytes(self) -> [u8; 2] {
        [self.product | self.system << 5, self.major]
    }

    /// The agent a family kept; `None` for none, or for bytes this version does not know.
    pub fn from_bytes(b: [u8; 2]) -> Option<Agent> {
        let [kinds, major] = b;
        let (product, system) = (kinds & 0x1f, kinds >> 5);
        let known = usize::from(product) < PRODUCTS.len() && usize::from(system) < SYSTEMS.len();
        (known && (product != 0 || system != 0)).then_some(Agent {
            product,
            system,
            major,
        })
    }

    /// As the sessions list shows it: `Chrome 131 on Linux`, `curl 8`, `Other on iOS`.
    pub fn describe(self) -> String {
        let mut out = match PRODUCTS[usize::from(self.product)] {
            "" => "Other".to_string(),
            name if self.major == 0 => name.to_string(),
            name => format!("{name} {}", self.major),
        };
        let system = SYSTEMS[usize::from(self.system)];
        if !system.is_empty() {
            out.push_str(" on ");
            out.push_str(system);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Agent;

    fn described(ua: &str) -> Option<String> {
        Agent::of(ua).map(Agent::describe)
    }

    #[test]
    fn browsers_programs_and_systems() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/131.0.0.0 Safari/537.36";
        assert_eq!(described(chrome).as_deref(), Some("Chrome 131 on Linux"));
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like \
                    Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70";
        assert_eq!(described(edge).as_deref(), Some("Edge 131 on Windows"));
        let safari = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 \
                      (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
        assert_eq!(described(safari).as_deref(), Some("Safari 17 on iOS"));
        let firefox = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 \
                       Firefox/133.0";
        assert_eq!(described(firefox).as_deref(), Some("Firefox 133 on macOS"));
        let android = "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) \
                       Chrome/131.0.0.0 Mobile Safari/537.36";
        assert_eq!(described(android).as_deref(), Some("Chrome 131 on Android"));
        assert_eq!(described("curl/8.5.0").as_deref(), Some("curl 8"));
        assert_eq!(
            described("python-requests/2.32.3").as_deref(),
            Some("Python 2")
        );
        assert_eq!(
            described("Phone/2.1 (iPhone; iOS 17)").as_deref(),
            Some("Other on iOS")
        );
        assert_eq!(described("Phone/2.1 (Mobile)"), None);
        assert_eq!(described(""), None);
        assert_eq!(
            described("Firefox/999999").as_deref(),
            Some("Firefox 255"),
            "a version past a byte is capped"
        );
    }

    #[test]
    fn two_bytes_round_trip_and_unknown_bytes_are_none() {
        let a = Agent::of("Mozilla/5.0 (Macintosh) Firefox/128.0").unwrap();
        assert_eq!(Agent::from_bytes(a.to_bytes()), Some(a));
        assert_eq!(Agent::from_bytes([0, 0]), None);
        assert_eq!(Agent::from_bytes([30, 1]), None);
        for product in 0..super::PRODUCTS.len() as u8 {
            for system in 0..super::SYSTEMS.len() as u8 {
                let a = Agent {
                    product,
                    system,
                    major: 7,
                };
                let back = Agent::from_bytes(a.to_bytes());
                assert_eq!(back, (product != 0 || system != 0).then_some(a));
            }
        }
    }
}
