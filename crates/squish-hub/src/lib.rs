//! Models from the Hugging Face Hub and the local store: the catalog of short names, the
//! Hub's HTTP protocol, downloads into the Hub's own cache layout, and squish's store of
//! converted models. Knows nothing of model formats: converting is the caller's step.

pub mod catalog;
mod client;
mod error;
mod fetch;
mod hf_cache;
mod store;

pub use catalog::{CatalogEntry, ModelRef, CATALOG};
pub use client::{Hub, RepoFile, RepoInfo, DEFAULT_ENDPOINT};
pub use error::{HubError, Result};
pub use fetch::{fetch, FetchEvent, FetchRequest, Snapshot};
pub use hf_cache::{hf_home, user_dir, HfCache};
pub use store::{PullRecord, Store, StoredModel, SCHEMES};
