//! EdgeDesk edge node: kiosk chat answered locally.
//!
//! Data flow: a visitor's WebSocket frame ([`server`]) → NLU ([`nlu`]) →
//! the dialog state machine ([`dialog`]) → one SQLite transaction with the
//! messages, the session state and any outbox events ([`store`]) → replies.
//! [`run`] wires it together; `main.rs` only parses arguments.

pub mod config;
pub mod dialog;
pub mod nlu;
