//! The order domain: the stored model, the pure state machine and fee rules,
//! the events each change causes, and the commands that apply changes in one
//! transaction each.

pub mod commands;
pub mod error;
pub mod events;
pub mod fees;
pub mod model;
pub mod repository;
pub mod reviews;
pub mod state_machine;
pub mod validation;

pub use commands::Orders;
pub use error::OrderError;
pub use model::{Notification, Order, OrderStatus};
