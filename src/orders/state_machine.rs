//! The order state machine: which action is allowed in which status, and
//! where it leads. Pure: no I/O, no clock.

use super::model::OrderStatus;

/// Something a party (or the payment provider) does to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pay,
    Cancel,
    RequestExtension,
    ApproveExtension,
    RejectExtension,
    Deliver,
    Approve,
}

/// What a cancellation owes the buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refund {
    None,
    /// The order was paid: refund its share through the provider.
    Due,
}

/// An allowed transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: OrderStatus,
    pub refund: Refund,
}

/// A refused transition; the message names the current status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("order is already cancelled")]
    AlreadyCancelled,
    #[error("cannot {action} an order that is {from}")]
    NotAllowed {
        action: &'static str,
        from: OrderStatus,
    },
    #[error("no delivery date extension is pending")]
    NoPendingExtension,
    #[error("a delivery date extension is already pending")]
    ExtensionPending,
}

/// Decides `action` on an order in `from`, with or without a pending extension request.
pub fn transition(
    from: OrderStatus,
    action: Action,
    extension_pending: bool,
) -> Result<Transition, Refused> {
    use Action::*;
    use OrderStatus::*;
    let to = |to| {
        Ok(Transition {
            to,
            refund: Refund::None,
        })
    };
    match (action, from) {
        (Cancel, Cancelled) => Err(Refused::AlreadyCancelled),
        (Cancel, AwaitingPayment) => to(Cancelled),
        (Cancel, Processing | Delivered) => Ok(Transition {
            to: Cancelled,
            refund: Refund::Due,
        }),
        (Pay, AwaitingPayment) => to(Processing),
        (RequestExtension, Processing) if extension_pending => Err(Refused::ExtensionPending),
        (RequestExtension, Processing) => to(Processing),
        (ApproveExtension | RejectExtension, Processing) if !extension_pending => {
            Err(Refused::NoPendingExtension)
        }
        (ApproveExtension | RejectExtension, Processing) => to(Processing),
        // A seller may deliver a revision after a first delivery.
        (Deliver, Processing | Delivered) => to(Delivered),
        (Approve, Delivered) => to(Completed),
        (action, from) => Err(Refused::NotAllowed {
            action: action.verb(),
            from,
        }),
    }
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Pay => "pay",
            Action::Cancel => "cancel",
            Action::RequestExtension => "request an extension for",
            Action::ApproveExtension => "approve an extension of",
            Action::RejectExtension => "reject an extension of",
            Action::Deliver => "deliver",
            Action::Approve => "approve",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use OrderStatus::*;

    const ALL_STATUSES: [OrderStatus; 5] =
        [AwaitingPayment, Processing, Delivered, Completed, Cancelled];
    const ALL_ACTIONS: [Action; 7] = [
        Pay,
        Cancel,
        RequestExtension,
        ApproveExtension,
        RejectExtension,
        Deliver,
        Approve,
    ];

    /// The whole table: (action, from, extension pending) -> allowed target.
    fn expected(action: Action, from: OrderStatus, pending: bool) -> Option<(OrderStatus, Refund)> {
        match (action, from, pending) {
            (Pay, AwaitingPayment, _) => Some((Processing, Refund::None)),
            (Cancel, AwaitingPayment, _) => Some((Cancelled, Refund::None)),
            (Cancel, Processing | Delivered, _) => Some((Cancelled, Refund::Due)),
            (RequestExtension, Processing, false) => Some((Processing, Refund::None)),
            (ApproveExtension | RejectExtension, Processing, true) => {
                Some((Processing, Refund::None))
            }
            (Deliver, Processing | Delivered, _) => Some((Delivered, Refund::None)),
            (Approve, Delivered, _) => Some((Completed, Refund::None)),
            _ => None,
        }
    }

    #[test]
    fn every_transition_is_allowed_or_refused_as_the_table_says() {
        for action in ALL_ACTIONS {
            for from in ALL_STATUSES {
                for pending in [false, true] {
                    let got = transition(from, action, pending)
                        .ok()
                        .map(|t| (t.to, t.refund));
                    assert_eq!(
                        got,
                        expected(action, from, pending),
                        "{action:?} from {from:?} (pending {pending})"
                    );
                }
            }
        }
    }

    #[test]
    fn refusals_name_the_current_status() {
        let refused = transition(Completed, Deliver, false).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "cannot deliver an order that is COMPLETED"
        );
        assert_eq!(
            transition(Cancelled, Cancel, false).unwrap_err(),
            Refused::AlreadyCancelled
        );
        assert_eq!(
            transition(Processing, ApproveExtension, false).unwrap_err(),
            Refused::NoPendingExtension
        );
        assert_eq!(
            transition(Processing, RequestExtension, true).unwrap_err(),
            Refused::ExtensionPending
        );
    }

    #[test]
    fn terminal_statuses_allow_nothing_but_a_cancel_refusal() {
        for action in ALL_ACTIONS {
            assert!(transition(Completed, action, false).is_err());
            assert!(transition(Cancelled, action, false).is_err());
        }
    }
}
