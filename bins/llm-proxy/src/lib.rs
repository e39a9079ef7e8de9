//! The llm-proxy binary's library half: command line, configuration loading
//! and wiring, so end-to-end tests can start the real proxy in-process.

pub mod app;
pub mod cli;
pub mod settings;
pub mod tools;

pub use app::{App, AppError};
pub use settings::{AppConfig, SettingsError};
