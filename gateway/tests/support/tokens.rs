//! Forging tokens for the attack corpus: the shared test-token tools of the dev stack.

#[allow(unused_imports)]
pub use dev_stack::tokens::*;
