//! A real headless Chromium driven through WebDriver ([`Browser`]), for the tests of the web UI.
//!
//! It starts Debian's `chromedriver` (package `chromium-driver`, with `chromium`) on a free
//! loopback port and speaks the W3C WebDriver protocol to it: JSON over HTTP/1.1, one
//! connection per command.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The W3C id of an element in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; the browser and its driver are stopped when dropped. Starting
/// panics with the reason when `chromedriver` or `chromium` is missing (tests never skip):
/// `apt-get install chromium chromium-driver`.
#[derive(Debug)]
pub struct Browser {
    port: u16,
    session: String,
    driver: Child,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session with a 1280×900 window.
    pub async fn start() -> Browser {
        let driver_path = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("chromedriver");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start {driver_path} ({e}): the UI tests need Debian's chromium \
                     and chromium-driver packages (.ci/run installs them)"
                )
            });
        let mut browser = Browser {
            port,
            session: String::new(),
            driver,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while browser.http("GET", "/status", None).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let session = browser.command("POST", "/session", capabilities).await;
        browser.session = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {session}"))
            .to_owned();
        browser
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.session_command("POST", "/url", json!({ "url": url }))
            .await;
    }

    /// The address of the page shown.
    pub async fn url(&self) -> String {
        let url = self.session_command("GET", "/url", Value::Null).await;
        url.as_str().unwrap_or_default().to_owned()
    }

    /// The address of the page shown once `wanted` holds for it, waiting up to ten seconds (a
    /// click may start a navigation that has not happened yet).
    ///
    /// # Panics
    ///
    /// When it does not hold by then.
    pub async fn url_when(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if wanted(&url) {
                return url;
            }
            assert!(Instant::now() < deadline, "the page stayed at {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its
    /// result.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.session_command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The element `css` selects, waiting up to ten seconds for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .request(
                    "POST",
                    &format!("/session/{}/element", self.session),
                    json!({ "using": "css selector", "value": css }),
                )
                .await;
            if let Some(id) = found["value"][ELEMENT].as_str() {
                return id.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element matches {css:?} on {}: {found}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.session_command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Clicks the link whose text is exactly `text`.
    pub async fn click_link(&self, text: &str) {
        let found = self
            .session_command(
                "POST",
                "/element",
                json!({ "using": "link text", "value": text }),
            )
            .await;
        let Some(id) = found[ELEMENT].as_str() else {
            panic!("no link {text:?} on {}", self.url().await);
        };
        self.session_command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Types `text` into the field `css` selects, after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.session_command("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        self.session_command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// The rendered text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        let text = self
            .session_command("GET", &format!("/element/{id}/text"), Value::Null)
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self
            .session_command("GET", "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 screenshot"))
            .expect("the screenshot decodes");
        std::fs::write(path, bytes)
            .unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
    }

    async fn session_command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body).await["value"].take()
    }

    /// A command that must succeed: its whole answer.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let answer = self.request(method, path, body).await;
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path} failed: {error}: {}",
                answer["value"]["message"]
            );
        }
        answer
    }

    async fn request(&self, method: &str, path: &str, body: Value) -> Value {
        let text = self
            .http(method, path, (!body.is_null()).then_some(&body))
            .await
            .unwrap_or_else(|e| panic!("chromedriver did not answer {method} {path}: {e}"));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("chromedriver answered {method} {path} with {e}: {text}"))
    }

    /// One HTTP/1.1 request on its own connection; the answer's body.
    async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        // chromedriver may keep the connection open: read the head, then the body's length.
        let mut answer = Vec::new();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = stream.read(&mut buffer).await?;
            answer.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let head = head.to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                match length {
                    Some(length) if body.len() >= length => return Ok(body[..length].to_owned()),
                    None if head.contains("transfer-encoding: chunked")
                        && body.ends_with("0\r\n\r\n") =>
                    {
                        return Ok(dechunk(body));
                    }
                    _ => {}
                }
            }
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "chromedriver closed the connection mid-answer: {}",
                        String::from_utf8_lossy(&answer)
                    ),
                ));
            }
        }
    }
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, which stops Chromium, then the driver.
        if let Ok(mut stream) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
            use std::io::{Read as _, Write as _};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
