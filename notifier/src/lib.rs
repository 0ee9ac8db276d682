//! # carepath-notifier
//!
//! Notices as people read them: templates rendered in the recipient's language with dates in
//! the pathway's time zone, and the arithmetic of SMS segments. Delivery channels (SMTP, SMS
//! gateways) arrive with the outbox.
//!
//! ```
//! use carepath_notifier::sms;
//!
//! let s = sms::segments("Påmindelse: tirsdag den 3. marts kl. 10.00");
//! assert_eq!((s.encoding, s.segments), (sms::Encoding::Gsm7, 1));
//! ```

pub use render::{RenderError, Rendered, Renderer};

pub mod render;
pub mod sms;
