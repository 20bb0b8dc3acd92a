//! Inbound webhooks from payment providers.

pub mod flutterwave;
