//! Placeholder: the router helper writes this crate.
