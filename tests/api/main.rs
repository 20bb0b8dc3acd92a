//! Integration tests: the real app on a random port against the real
//! MongoDB-wire server and RabbitMQ (started by scripts/deps.sh), with the
//! Flutterwave simulator in-process. Each test has its own database and its
//! own exchange names.

mod apm;
mod auth_matrix;
mod checkout;
mod events;
mod hardening;
mod helpers;
mod load;
mod logs;
mod observability;
mod orders;
mod outage;
mod payments;
mod realtime;
mod reviews;
mod scale;
mod secrets_in_logs;
mod webhook_fuzz;
