//! # carepath-notifier
//!
//! Notices as people read them, and the channels that carry them:
//!
//! - [`render`]: templates rendered in the recipient's language, dates in the pathway's zone;
//! - [`sms`]: the arithmetic of SMS segments (GSM-7 and UCS-2);
//! - [`channel`]: the message handed to a channel, its receipt, and transient versus
//!   permanent failure;
//! - [`email`]: SMTP with lettre, with [`calendar`] entries (RFC 5545) attached; [`gateway`]: GatewayAPI, CPSMS and a JSON webhook;
//!   [`file`]: JSON lines to a file or the console, for development and the demo;
//! - [`retry`]: backoff with jitter, and when a notice becomes a dead letter;
//! - [`quiet`]: when a family may be messaged, with the Danish public holidays;
//! - [`config`]: the configuration file that ties them together.
//!
//! ```
//! use carepath_notifier::sms;
//!
//! let s = sms::segments("Påmindelse: tirsdag den 3. marts kl. 10.00");
//! assert_eq!((s.encoding, s.segments), (sms::Encoding::Gsm7, 1));
//! ```

pub use channel::{Message, Receipt, SendError};
pub use config::{Channels, ConfigError, NotifierConfig};
pub use render::{RenderError, Rendered, Renderer};

pub mod calendar;
pub mod channel;
pub mod config;
pub mod email;
pub mod file;
pub mod gateway;
pub mod quiet;
pub mod render;
pub mod retry;
pub mod sms;
