//! The request path: route, guard, place the credential, forward through
//! the pooled upstream client, read WeChat's answer and scrub it.

pub mod body;
pub mod failover;
pub mod guard;
pub mod inspect;
pub mod policy;
pub mod proxy;
pub mod query;
pub mod route;
pub mod scrub;
pub mod upstream;
