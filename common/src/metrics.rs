//! Prometheus text exposition, and the small HTTP endpoint that serves it (coordinator and
//! workers alike): `GET /metrics`.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Builds a Prometheus text page, family by family.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    pub fn new() -> Self {
        Exposition::default()
    }

    /// Starts a metric family: `kind` is counter, gauge or histogram.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        self
    }

    /// One sample; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.0.push_str(name);
        if !labels.is_empty() {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let _ = write!(self.0, "{{{}}}", body.join(","));
        }
        if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.0, " {}", value as i64);
        } else {
            let _ = writeln!(self.0, " {value}");
        }
        self
    }

    /// A histogram from cumulative bucket counts (upper bounds in seconds), sum and count.
    pub fn histogram(
        &mut self,
        name: &str,
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        for (le, n) in buckets {
            let le = format!("{le}");
            self.sample(&format!("{name}_bucket"), &[("le", &le)], *n as f64);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count as f64);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count as f64)
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// Serves `GET /metrics` with what `render` returns, until `shutdown` completes.
pub async fn serve<F>(
    listener: TcpListener,
    render: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let render = render.clone();
                // Each answer is bounded in time; the set ends them all when the server stops.
                connections.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                            let n = stream.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            head.extend_from_slice(&buf[..n]);
                        }
                        let text = String::from_utf8_lossy(&head);
                        let path = text.split_whitespace().nth(1).unwrap_or("");
                        let (status, kind, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render())
                        } else {
                            ("404 Not Found", "text/plain", "try /metrics\n".to_string())
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        stream.write_all(reply.as_bytes()).await?;
                        stream.shutdown().await
                    })
                    .await;
                });
                while connections.try_join_next().is_some() {}
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_prometheus_text() {
        let mut e = Exposition::new();
        e.family("x_total", "counter", "Things.")
            .sample("x_total", &[("kind", "a\"b")], 3.0);
        e.family("lat_seconds", "histogram", "Latency.").histogram(
            "lat_seconds",
            &[(0.1, 1), (1.0, 3)],
            1.5,
            4,
        );
        let text = e.finish();
        assert!(
            text.contains("# TYPE x_total counter\nx_total{kind=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_sum 1.5\n"), "{text}");
    }
}
