mod cli;
mod diagnostics;
mod fixtures;
mod notices;
mod process;
mod runtime;
mod schema;
mod support;
