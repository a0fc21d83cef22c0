//! How the CLI's waits (`watch`, `submit --wait`, `refresh --wait`, `results --follow`) outlive
//! a coordinator restart: which failures pass with one, how long to wait between attempts, and
//! until when to keep trying.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use proxyfleet_proto::v1 as pb;

use crate::client::{self, Failure};

/// The wait before the first reconnect attempt; it doubles with each attempt after.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);

/// The longest wait between two attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(3);

/// How long past its job's deadline a wait goes on reconnecting: a coordinator back by then
/// has ended the job and shows how.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(60);

/// How long a wait that has not seen its job yet (so knows no deadline) goes on reconnecting.
pub const UNSEEN_JOB_LIMIT: Duration = Duration::from_secs(120);

/// The wait before reconnect attempt `attempt` (0 for the first): [`BACKOFF_FIRST`] doubled per
/// attempt up to [`BACKOFF_CAP`], less up to half of it by `jitter` (in 0..1), so that clients
/// cut off together do not all come back at once.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// Whether a wait's call or stream failed in a way a coordinator restart explains (it is down,
/// refuses connections, or cut the stream), so that trying again may succeed. Errors that are
/// the coordinator's answer to the request (an unknown job, a refused token, a bad argument, a
/// limit) are not: trying again would get the same answer.
pub fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => true,
        // The connection or its HTTP/2 stream broke under the call: the error carries the
        // transport's cause. Without one it is the coordinator's own answer.
        Code::Unknown | Code::Internal => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// How long a wait may keep reconnecting after seeing a job `elapsed_ms` into its
/// `deadline_ms`: until the coordinator must have ended it, and a grace period to hear how.
pub fn reconnect_limit(deadline_ms: u64, elapsed_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms.saturating_sub(elapsed_ms)) + DEADLINE_GRACE
}

/// A wait's way back to its coordinator: how many attempts failed in a row, whether it said it
/// is reconnecting, and until when it keeps trying.
pub struct Reconnect {
    /// The coordinator's URL, for messages.
    coordinator: String,
    /// The job followed, for messages.
    job_id: String,
    /// Attempts that failed since the coordinator last answered.
    attempt: u32,
    /// Whether the line saying so was printed for this outage.
    told: bool,
    /// When to stop trying: past the job's deadline as last seen.
    give_up: Instant,
}

impl Reconnect {
    pub fn new(coordinator: &str, job_id: &str) -> Reconnect {
        Reconnect {
            coordinator: coordinator.to_string(),
            job_id: job_id.to_string(),
            attempt: 0,
            told: false,
            give_up: Instant::now() + UNSEEN_JOB_LIMIT,
        }
    }

    /// The coordinator answered with the job: it is back, and the job's deadline bounds how
    /// long a later outage is waited out.
    pub fn seen(&mut self, job: &pb::Job) {
        let deadline_ms = job.settings.as_ref().map_or(0, |s| s.deadline_ms);
        let elapsed_ms = job.progress.as_ref().map_or(0, |p| p.elapsed_ms);
        self.give_up = Instant::now() + reconnect_limit(deadline_ms, elapsed_ms);
        self.answered();
    }

    /// The coordinator answered (results came): it is back.
    pub fn answered(&mut self) {
        self.attempt = 0;
        self.told = false;
    }

    /// A call or stream of the wait failed with `status`. Waits the next backoff and returns
    /// Ok to try again, or ends the wait: at once when the failure is not transient (with the
    /// message it always had), or once the job's deadline passed with the coordinator still
    /// away. Says once per outage that it is reconnecting.
    pub async fn after(&mut self, status: tonic::Status) -> Result<(), Failure> {
        if !is_transient(&status) {
            return Err(client::from_status(status, &self.coordinator));
        }
        let now = Instant::now();
        if now >= self.give_up {
            return Err(Failure::new(
                client::EXIT_UNREACHABLE,
                format!(
                    "error: lost the coordinator at {} ({}) and it did not come back before job {}'s deadline; check that it is running, then `proxyfleet watch {}`",
                    self.coordinator,
                    proxyfleet_common::text::shorten(status.message(), 200),
                    self.job_id,
                    self.job_id
                ),
            ));
        }
        if !self.told {
            let _ = writeln!(
                std::io::stderr(),
                "coordinator unreachable ({}); reconnecting to follow job {}",
                proxyfleet_common::text::shorten(status.message(), 200),
                self.job_id
            );
            self.told = true;
        }
        let delay = backoff(self.attempt, fastrand::f64()).min(self.give_up - now);
        self.attempt = self.attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_and_jitter_takes_off_at_most_half() {
        let ms = |attempt, jitter| backoff(attempt, jitter).as_millis();
        let plain: Vec<u128> = (0..7).map(|a| ms(a, 0.0)).collect();
        assert_eq!(plain, [200, 400, 800, 1600, 3000, 3000, 3000]);
        assert_eq!(ms(u32::MAX, 0.0), 3000, "no overflow however many attempts");
        assert_eq!(ms(0, 1.0), 100);
        assert_eq!(ms(10, 1.0), 1500);
        for attempt in 0..20 {
            for jitter in [0.0, 0.3, 0.999, 7.0, -1.0] {
                let d = backoff(attempt, jitter);
                assert!(
                    d <= BACKOFF_CAP && d >= BACKOFF_FIRST / 2,
                    "{attempt} {jitter} {d:?}"
                );
            }
        }
    }

    #[test]
    fn only_failures_a_restart_explains_are_transient() {
        use tonic::{Code, Status};
        let with_cause = |code| {
            let mut status = Status::new(code, "connection reset");
            status.set_source(std::sync::Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )));
            status
        };
        for code in [Code::Unavailable, Code::Cancelled, Code::DeadlineExceeded] {
            assert!(is_transient(&Status::new(code, "x")), "{code:?}");
        }
        // A stream cut under the call, as h2 and hyper report it.
        assert!(is_transient(&with_cause(Code::Unknown)));
        assert!(is_transient(&with_cause(Code::Internal)));
        // The coordinator's own answers end the wait at once.
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Unknown,
            Code::Internal,
        ] {
            assert!(!is_transient(&Status::new(code, "x")), "{code:?}");
        }
        assert!(!is_transient(&with_cause(Code::NotFound)));
    }

    #[test]
    fn reconnecting_is_bounded_by_the_jobs_deadline_and_a_grace() {
        assert_eq!(
            reconnect_limit(3_600_000, 600_000),
            Duration::from_secs(3000) + DEADLINE_GRACE
        );
        assert_eq!(reconnect_limit(1_000, 5_000), DEADLINE_GRACE, "past it");
        assert_eq!(reconnect_limit(0, 0), DEADLINE_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_gives_up_past_the_deadline_and_at_once_on_an_answer() {
        let mut reconnect = Reconnect::new("http://c", "job-x");
        let job = pb::Job {
            settings: Some(pb::JobSettings {
                deadline_ms: 10_000,
                ..Default::default()
            }),
            progress: Some(pb::JobProgress {
                elapsed_ms: 9_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        reconnect.seen(&job);
        let not_found = reconnect
            .after(tonic::Status::not_found("no job job-x"))
            .await
            .unwrap_err();
        assert_eq!(not_found.code, client::EXIT_BAD_INPUT);
        assert_eq!(not_found.message, "error: no job job-x");
        // Tries while the job may still be running or about to be shown ended...
        let mut tries = 0;
        let failure = loop {
            match reconnect.after(tonic::Status::unavailable("down")).await {
                Ok(()) => tries += 1,
                Err(failure) => break failure,
            }
            assert!(tries < 1000, "the wait is bounded");
        };
        // ...then stops, saying so: 61 s of backoff capped at 3 s is at least 20 tries.
        assert!(tries >= 20, "{tries}");
        assert_eq!(failure.code, client::EXIT_UNREACHABLE);
        assert!(
            failure
                .message
                .contains("did not come back before job job-x's deadline"),
            "{}",
            failure.message
        );
    }
}
