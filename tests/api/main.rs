//! Integration tests: the real app on a random port against the real
//! MongoDB-wire server and RabbitMQ (started by scripts/deps.sh), with the
//! Flutterwave simulator in-process. Each test has its own database and its
//! own exchange names.

mod checkout;
mod events;
mod helpers;
mod load;
mod orders;
mod outage;
mod payments;
mod reviews;
