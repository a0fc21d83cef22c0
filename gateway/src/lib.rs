//! proxyfleet gateway: follows one pool over WatchPool and serves clients on one address (HTTP
//! forward and CONNECT, SOCKS5), sending each client connection through one live upstream proxy
//! of the pool, chosen by policy, retried on another before the client sees an error.

pub mod choose;
pub mod wants;
