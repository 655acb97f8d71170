//! Kubernaut's decisions, apart from actors and I/O: the rule table
//! ([`rules`]), the LLM's prompt and answer handling ([`analysis`]), and
//! the approval policy ([`approval`]). The actors gather facts and call
//! providers; everything decided from them is here, and unit-tested here.

pub mod analysis;
pub mod approval;
pub mod rules;

pub use rules::Rule;
