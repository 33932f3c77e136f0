//! pdbench: a benchmark and evaluation harness for parallel decoding
//! methods of language models, under matched settings.

// Result tuples (tokens, logits, counts) read better inline than behind
// one-use aliases.
#![allow(clippy::type_complexity)]

pub mod audit;
pub mod check;
pub mod cli;
pub mod compare;
pub mod env;
pub mod fetch;
pub mod measure;
pub mod merge;
pub mod methods;
pub mod model;
pub mod peer;
pub mod report;
pub mod results;
pub mod runner;
pub mod sampling;
pub mod score;
pub mod stats;
pub mod store;
pub mod suite;
pub mod sweep;
pub mod toy;
pub mod train;
pub mod util;
