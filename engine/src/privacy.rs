//! What must never be repeated back: a value that could be a Danish CPR number.
//!
//! Reasons for refusing an input are recorded, shown through the API and logged. A sensitive
//! field's value is never in them; neither is any value that looks like a CPR number, in
//! whatever field someone typed it.

/// Whether `s` holds what could be a CPR number anywhere in it: ten digits in a row (a dash or
/// a blank allowed after the sixth) whose first six are a plausible date, in any of the digit
/// forms a keyboard can type (`０１０１９０１２３４`, Arabic-Indic `٠١٠١٩٠١٢٣٤`), with or
/// without letters around them (`CPR0101901234`).
pub fn looks_like_cpr(s: &str) -> bool {
    // Each character as an ASCII digit, a separator, or a break.
    let normal: Vec<Option<u8>> = s
        .chars()
        .map(|c| match c {
            '0'..='9' => Some(c as u8 - b'0'),
            '\u{ff10}'..='\u{ff19}' => Some((c as u32 - 0xff10) as u8),
            '\u{0660}'..='\u{0669}' => Some((c as u32 - 0x0660) as u8),
            '\u{06f0}'..='\u{06f9}' => Some((c as u32 - 0x06f0) as u8),
            '-' | ' ' | '\u{2010}'..='\u{2015}' | '\u{00a0}' => Some(10),
            _ => None,
        })
        .collect();
    let plausible = |d: &[u8]| {
        let day = d[0] * 10 + d[1];
        let month = d[2] * 10 + d[3];
        (1..=31).contains(&day) && (1..=12).contains(&month)
    };
    for start in 0..normal.len() {
        // A run starts at a digit that does not continue an earlier one.
        if !matches!(normal[start], Some(d) if d < 10)
            || (start > 0 && matches!(normal[start - 1], Some(d) if d < 10))
        {
            continue;
        }
        let mut digits: Vec<u8> = Vec::with_capacity(10);
        let mut i = start;
        while let Some(Some(d)) = normal.get(i).copied() {
            if d < 10 {
                digits.push(d);
            } else if digits.len() != 6 || !matches!(normal.get(i + 1), Some(Some(n)) if *n < 10) {
                break;
            }
            i += 1;
        }
        if digits.len() == 10 && plausible(&digits) {
            return true;
        }
    }
    false
}

/// `value` as a reason may quote it: in full, or, when it holds what could be a CPR number,
/// only as what kind of value it is.
pub fn shown(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if looks_like_cpr(&text) {
        match value {
            serde_json::Value::String(_) => {
                "a text that is not shown, since it looks like a CPR number".into()
            }
            _ => "a value that is not shown, since it looks like a CPR number".into(),
        }
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpr_numbers_are_recognised() {
        assert!(looks_like_cpr("0101901234"));
        assert!(looks_like_cpr("010190-1234"));
        assert!(looks_like_cpr("010190 1234"));
        assert!(looks_like_cpr("CPR0101901234"));
        assert!(looks_like_cpr("fam-0101901234-x"));
        assert!(looks_like_cpr("０１０１９０１２３４"));
        assert!(looks_like_cpr("٠١٠١٩٠١٢٣٤"));
        assert!(looks_like_cpr("۰۱۰۱۹۰۱۲۳۴"));
        assert!(!looks_like_cpr("FAM-0001"));
        assert!(!looks_like_cpr("9999999999"));
        assert!(
            !looks_like_cpr("01019012345"),
            "eleven digits are no CPR number"
        );
        assert!(!looks_like_cpr("2027-0042"));
    }

    #[test]
    fn a_cpr_number_is_never_shown() {
        assert_eq!(shown(&serde_json::json!("2027-13-01")), "\"2027-13-01\"");
        assert!(!shown(&serde_json::json!("010190-1234")).contains("1234"));
        assert!(!shown(&serde_json::json!({"cpr": "0101901234"})).contains("1234"));
        assert!(!shown(&serde_json::json!(1012901234u64)).contains("1234"));
    }
}
