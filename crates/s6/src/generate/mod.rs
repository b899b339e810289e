//! Generation runtime.
