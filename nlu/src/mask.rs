//! Masking of personal data in text that leaves the branch: the one function
//! every outgoing text goes through ([`mask_personal`]).
//!
//! Replaced, in this order (an earlier kind wins where matches overlap):
//! e-mail addresses (`[email]`), IBANs with a valid mod-97 checksum
//! (`[iban]`), Chinese resident identity numbers, 18 characters ending in a
//! digit or X with a plausible birth date, or the older 15 digits
//! (`[id]`), card numbers of 13 to 19 digits, optionally grouped (`[card]`),
//! and phone numbers (`[phone]`): Chinese mobiles (11 digits from 13 to 19,
//! with or without +86 and spaces), and numbers of 7 to 15 digits written as
//! phone numbers are (a leading `+`, brackets, spaces, dots or dashes
//! between groups), or a bare run of 10 to 15 digits.
//!
//! Kept on purpose (false positives cost agents their context): a number
//! glued to letters or a dash-joined code (`REL12-1795995336`, `A-1234567`,
//! `order#12345678`), dates (`2026-12-01`, `01.12.2026`), year ranges
//! (`2019-2024`), amounts (`1,250.00`, `1000000`), times and short numbers.
//! The table in the tests names each case, both ways.

use std::sync::LazyLock;

use regex::Regex;

use crate::entities::re;

/// No `\b`: in Unicode mode a CJK character counts as a word character, so
/// `手机13812345678` has no word boundary. Neighbours are checked by hand.
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}"));
static IBAN: LazyLock<Regex> =
    LazyLock::new(|| re(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"));
static CN_ID: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]|[1-9]\d{7}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}",
    )
});
/// Bare, or grouped as cards print them (4-4-4-4 up to 19 digits; 4-6-5).
static CARD: LazyLock<Regex> =
    LazyLock::new(|| re(r"\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5}|\d{13,19}"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| re(r"\+?\(?\d[\d ().-]{5,20}\d\)?"));
static DATE: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4})(?:$|\D)")
});
static YEARS: LazyLock<Regex> = LazyLock::new(|| re(r"^(?:19|20)\d{2} ?- ?(?:19|20)\d{2}$"));
static CN_MOBILE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}$"));

/// Replace personal data in `text` with placeholders (see the module docs).
pub fn mask_personal(text: &str) -> String {
    let text = replace(text, &EMAIL, |_| Some("[email]"));
    let text = replace(&text, &IBAN, |m| iban_valid(m).then_some("[iban]"));
    let text = replace(&text, &CN_ID, |_| Some("[id]"));
    let text = replace(&text, &CARD, |_| Some("[card]"));
    replace(&text, &PHONE, |m| phone_like(m).then_some("[phone]"))
}

/// Replace each match that stands on its own (not glued to letters, digits,
/// or a code joined by `-`, `_`, `/`, `#`) and that `keep` names a placeholder for.
fn replace(text: &str, pattern: &Regex, keep: impl Fn(&str) -> Option<&'static str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for m in pattern.find_iter(text) {
        let before = text[..m.start()].chars().next_back();
        let after = text[m.end()..].chars().next();
        let glued_before = before.is_some_and(|c| c.is_ascii_alphanumeric() || "_/#".contains(c))
            || (before == Some('-') && glued_to_code(&text[..m.start() - 1]));
        let glued_after = after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@');
        if glued_before || glued_after {
            continue;
        }
        if let Some(placeholder) = keep(m.as_str()) {
            out.push_str(&text[last..m.start()]);
            out.push_str(placeholder);
            last = m.end();
        }
    }
    out.push_str(&text[last..]);
    out
}

/// `REL12-…`: the text before a dash ends in a letter-and-digit code.
fn glued_to_code(before_dash: &str) -> bool {
    before_dash
        .chars()
        .next_back()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && before_dash
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric())
            .any(|c| c.is_ascii_alphabetic())
}

fn phone_like(m: &str) -> bool {
    let digits = m.chars().filter(char::is_ascii_digit).count();
    if !(7..=15).contains(&digits) || DATE.is_match(m) || YEARS.is_match(m) {
        return false;
    }
    if CN_MOBILE.is_match(m) {
        return true;
    }
    // One dot is a decimal amount; phone numbers dot every group or none.
    let dots = m.matches('.').count();
    if dots == 1 {
        return false;
    }
    let written_as_phone =
        m.starts_with('+') || m.contains('(') || m.contains(' ') || m.contains('-') || dots >= 2;
    written_as_phone || digits >= 10
}

/// ISO 13616: move the first four characters to the end, letters to
/// numbers (A = 10), and the number mod 97 must be 1.
fn iban_valid(m: &str) -> bool {
    let s: String = m.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for c in s[4..].chars().chain(s[..4].chars()) {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case both ways: what must be masked, and what must stay.
    const CASES: &[(&str, &str, &str)] = &[
        // (what, input, expected)
        (
            "card, grouped",
            "card 4111 1111 1111 1111 please",
            "card [card] please",
        ),
        ("card, bare", "card 4111111111111111", "card [card]"),
        ("card, dashes", "4111-1111-1111-1111", "[card]"),
        (
            "card next to Chinese",
            "卡号6222021234567890123",
            "卡号[card]",
        ),
        (
            "international phone",
            "call +44 20 7946 0958 today",
            "call [phone] today",
        ),
        ("US phone", "(212) 555-0100", "[phone]"),
        ("CN mobile", "我的手机13812345678", "我的手机[phone]"),
        (
            "CN mobile, +86 spaced",
            "电话+86 138 1234 5678",
            "电话[phone]",
        ),
        ("CN mobile, dashes", "138-1234-5678", "[phone]"),
        ("CN landline", "座机010-62345678", "座机[phone]"),
        ("dotted phone", "555.123.4567", "[phone]"),
        ("bare ten digits", "ring 2125550100", "ring [phone]"),
        ("bare 16 digits are a card", "4402079460958123", "[card]"),
        ("Amex grouping", "3782 822463 10005", "[card]"),
        ("e-mail", "mail a.b@example.com now", "mail [email] now"),
        (
            "e-mail next to Chinese",
            "邮箱zhang.san@example.cn谢谢",
            "邮箱[email]谢谢",
        ),
        (
            "CN resident ID",
            "身份证号110101199003071234",
            "身份证号[id]",
        ),
        (
            "CN resident ID ending in X",
            "ID 11010119900307123X ok",
            "ID [id] ok",
        ),
        ("CN resident ID, old 15 digits", "110101900307123", "[id]"),
        (
            "IBAN, grouped",
            "IBAN GB82 WEST 1234 5698 7654 32 thanks",
            "IBAN [iban] thanks",
        ),
        ("IBAN, bare", "DE89370400440532013000", "[iban]"),
        // Kept.
        (
            "ticket reference",
            "ticket REL12-1795995336 is open",
            "ticket REL12-1795995336 is open",
        ),
        (
            "code with letters",
            "order AB1234567890",
            "order AB1234567890",
        ),
        ("hash reference", "order#12345678", "order#12345678"),
        ("ISO date", "on 2026-12-01", "on 2026-12-01"),
        (
            "date and time",
            "on 2026-12-01 10:30",
            "on 2026-12-01 10:30",
        ),
        ("European date", "on 01.12.2026", "on 01.12.2026"),
        ("year range", "from 2019-2024", "from 2019-2024"),
        (
            "amount with grouping",
            "pay 1,250,000.00 EUR",
            "pay 1,250,000.00 EUR",
        ),
        (
            "plain amount",
            "transfer 1000000 yuan",
            "transfer 1000000 yuan",
        ),
        ("decimal amount", "12345678.90 USD", "12345678.90 USD"),
        ("time", "at 14:30", "at 14:30"),
        ("short number", "nothing here 1234", "nothing here 1234"),
        ("version", "app 1.2.3", "app 1.2.3"),
        ("last four digits", "card ending 4242", "card ending 4242"),
        (
            "IBAN-shaped code, bad checksum",
            "code AB12 CDEF GHIJ KLMN",
            "code AB12 CDEF GHIJ KLMN",
        ),
        ("Chinese text", "我想查询余额", "我想查询余额"),
    ];

    #[test]
    fn the_table_of_cases_both_ways() {
        let mut wrong = Vec::new();
        for (what, input, expected) in CASES {
            let got = mask_personal(input);
            if got != *expected {
                wrong.push(format!(
                    "{what}: {input:?} -> {got:?}, expected {expected:?}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn several_kinds_in_one_line() {
        assert_eq!(
            mask_personal(
                "card 4111 1111 1111 1111, call +44 20 7946 0958 or a.b@example.com on 2026-12-01 about 300 EUR"
            ),
            "card [card], call [phone] or [email] on 2026-12-01 about 300 EUR"
        );
    }

    #[test]
    fn masking_is_idempotent() {
        for (_, input, _) in CASES {
            let once = mask_personal(input);
            assert_eq!(mask_personal(&once), once, "{input}");
        }
    }
}
