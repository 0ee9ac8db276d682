mod cli;
mod diagnostics;
mod notices;
mod schema;
mod support;
