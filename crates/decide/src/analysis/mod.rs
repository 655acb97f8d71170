//! The pure half of the Analysis stage (K-AI-1 … K-AI-3), without actors
//! or I/O: what is offered to the LLM, the prompt it gets, and how its
//! answer is checked.
//!
//! The output schema is built per request from the executor's catalogue,
//! the single source of parameter schemas: only actions on objects the
//! request is about are offered, and their object-naming parameters are
//! enums of those objects, so that a model cannot point an action at
//! something else. The answer is validated as the executor would parse it
//! (the catalogue's types, the bounds, the object it acts on). The prompt
//! never carries a Secret (none is read) nor a label or annotation whose
//! name says credential, and is cut to its bound.

mod answer;
mod facts;
mod offer;
mod prompt;

pub use answer::{Verdict, validate};
pub use facts::{Facts, Past};
pub use offer::{Offered, offer, output_schema};
pub use prompt::{SYSTEM, bounded, incident};

pub(crate) const FREE_TEXT: &str = "^[A-Za-z0-9 ,.:;()'/_%+=<>-]+$";
/// Confidence as an enum: llama.cpp does not enforce numeric bounds.
pub(crate) const CONFIDENCES: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// How much of the model's prose the status keeps.
pub(crate) const MAX_TEXT: usize = 500;
pub(crate) const MAX_PODS: usize = 5;
pub(crate) const MAX_EVENTS: usize = 10;

#[cfg(test)]
mod tests;
