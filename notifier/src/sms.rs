//! SMS length: GSM-7 fits 160 characters in one message and 153 per part; anything outside
//! the GSM-7 alphabet (Arabic, emoji) forces UCS-2, with 70 and 67.

/// How a message is encoded on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The GSM 03.38 default alphabet (æ, ø, å fit).
    Gsm7,
    /// UTF-16: 16 bits a unit.
    Ucs2,
}

/// The size of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    /// The encoding the message needs.
    pub encoding: Encoding,
    /// Length in the encoding's units (septets for GSM-7, UTF-16 units for UCS-2).
    pub units: usize,
    /// How many messages it is billed and delivered as.
    pub segments: usize,
}

const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// Counts the segments of `text`.
pub fn segments(text: &str) -> Segments {
    let mut septets = 0;
    let mut gsm = true;
    for c in text.chars() {
        if BASIC.contains(c) {
            septets += 1;
        } else if EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, part) = if gsm {
        (Encoding::Gsm7, septets, 160, 153)
    } else {
        (Encoding::Ucs2, text.encode_utf16().count(), 70, 67)
    };
    let segments = match units {
        0 => 0,
        n if n <= single => 1,
        n => n.div_ceil(part),
    };
    Segments {
        encoding,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn danish_fits_gsm7() {
        let s = segments("Hej Åse, din aftale er flyttet. Ring på 70 20 30 40.");
        assert_eq!(s.encoding, Encoding::Gsm7);
        assert_eq!(s.segments, 1);
    }

    #[test]
    fn boundaries() {
        assert_eq!(segments(&"a".repeat(160)).segments, 1);
        assert_eq!(segments(&"a".repeat(161)).segments, 2);
        assert_eq!(segments(&"a".repeat(306)).segments, 2);
        assert_eq!(segments(&"a".repeat(307)).segments, 3);
        // The euro sign takes two septets.
        assert_eq!(segments(&"€".repeat(80)).units, 160);
        assert_eq!(segments(&"€".repeat(81)).segments, 2);
        assert_eq!(segments("").segments, 0);
    }

    #[test]
    fn arabic_forces_ucs2() {
        let s = segments("تذكير: لديك موعد");
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(segments(&"ت".repeat(70)).segments, 1);
        assert_eq!(segments(&"ت".repeat(71)).segments, 2);
        // An emoji is two UTF-16 units.
        assert_eq!(segments("😀").units, 2);
    }
}
