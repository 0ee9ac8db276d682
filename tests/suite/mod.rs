mod cli;
mod diagnostics;
mod schema;
mod support;
