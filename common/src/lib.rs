//! What the coordinator, the workers and the CLI share besides the wire: tokens, TLS files, the
//! address policy and the guard every outgoing connection dials through, the strict URL parser,
//! listeners, metrics pages and logging.

pub mod addr;
pub mod auth;
pub mod config_file;
pub mod dial;
pub mod guard;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod results;
pub mod signals;
pub mod text;
pub mod tls;
pub mod url;
