//! Choosing an upstream: the gateway's view of the pool's live set, rotation policies, sticky
//! sessions by rendezvous hashing, in-flight counts and cool-downs. Pure: the clock is passed in.
