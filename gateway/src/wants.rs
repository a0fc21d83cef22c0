//! What a client asks of its upstream, from its username (`USER-session-ID-country-DE...`) and
//! the listener's defaults. Pure.
