//! What the benchmarks share with the chaos suite: [`socket`], a minimal
//! Socket.IO client speaking the real wire protocol.

pub mod socket;
