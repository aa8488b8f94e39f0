//! Doorstep's central server: accounts and devices, and authenticated, durable
//! multi-document sync of case files over HTTP, on SQLite by default and PostgreSQL at scale.
//!
//! Layers, top down: [`api`] (routes, the JSON extractor, middleware) → [`sync`] and [`auth`]
//! (the rules) → [`storage`] (one trait, SQLite and PostgreSQL). The case-file model, its
//! validation and the sync protocol come from `doorstep-sync-core`, shared with the phones.
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod app;
pub mod auth;
pub mod blob_store;
pub mod cases;
pub mod config;
pub mod demo;
pub mod doc_cache;
pub mod error;
pub mod evidence;
pub mod graph_cache;
pub mod http_listener;
pub mod metrics;
pub mod repo_ws;
pub mod storage;
pub mod sync;
pub mod upload_queue;
pub mod web;

pub use app::{App, AppState, StartupError};
pub use config::Config;
pub use error::ApiError;
