//! Kubernaut's decisions, apart from actors and I/O: the rule table
//! ([`rules`]), the LLM's prompt and answer handling ([`analysis`]), and
//! the approval policy ([`approval`]). The actors gather facts and call
//! providers; everything decided from them is here, and unit-tested here.

pub mod analysis;
pub mod approval;
pub mod rules;

pub use rules::Rule;

/// What this crate refuses when the configuration is loaded: a rule table
/// or an approval policy that cannot be used. (A decision that cannot be
/// made for one request is not an error here: the rules say why, and a
/// policy that cannot answer requires approval.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Rules(String),
    #[error("approval policy {path}: {message}")]
    Policy { path: String, message: String },
}
