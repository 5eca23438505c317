//! Rule-based entities: where a rule is exact, a model is not needed.
//!
//! Dates (today, tomorrow, weekdays, 明天, 下周一, ISO dates, "3 December",
//! 12月3日), times (10am, 14:30, 下午3点半), amounts with currency ($20,
//! 100 EUR, 50元), phone numbers, e-mail addresses and card last-four digits.
//! Masking personal data is [`crate::mask`]'s job.
//! Pure functions: "today" is an argument, so results are reproducible.

use std::sync::LazyLock;

use chrono::{Datelike, Duration, NaiveDate, NaiveTime, Weekday};
use regex::Regex;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entities {
    pub date: Option<NaiveDate>,
    pub time: Option<NaiveTime>,
    pub amount: Option<Amount>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub card_last4: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    /// Decimal number as written, without grouping commas, e.g. `1200.50`.
    pub value: String,
    /// ISO 4217 code.
    pub currency: String,
}

/// Compile a built-in pattern (a typo is a bug, caught by the first test).
pub(crate) fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("built-in pattern compiles")
}

static ISO_DATE: LazyLock<Regex> = LazyLock::new(|| re(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"));
static ZH_DATE: LazyLock<Regex> = LazyLock::new(|| re(r"(\d{1,2})月(\d{1,2})[日号]"));
static EN_DAY_MONTH: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(\d{1,2})(?:st|nd|rd|th)?(?:\s+of)?\s+(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b",
    )
});
static EN_MONTH_DAY: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b",
    )
});
static EN_WEEKDAY: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(next\s+)?(monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tues|tue|wed|thurs|thur|thu|fri|sat|sun)\b",
    )
});
static ZH_WEEKDAY: LazyLock<Regex> =
    LazyLock::new(|| re(r"(下个?)?(?:周|星期|礼拜)([一二三四五六日天])"));
static EN_RELATIVE: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b(day after tomorrow|today|tonight|tomorrow|tmrw|tmr)\b"));
static ZH_RELATIVE: LazyLock<Regex> =
    LazyLock::new(|| re(r"(大后天|后天|明天|明日|今天|今日|今晚)"));

static TIME_HM: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b(\d{1,2}):(\d{2})\s*(am|pm|a\.m\.|p\.m\.)?"));
static TIME_H_AMPM: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b(\d{1,2})\s*(am|pm|a\.m\.|p\.m\.)"));
static TIME_OCLOCK: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\b(\d{1,2})\s*o'?\s?clock\b"));
static TIME_AT: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\bat\s+(\d{1,2})\b"));
static TIME_NOON: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\b(noon|midday)\b|中午"));
static ZH_TIME: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(上午|早上|早晨|中午|下午|傍晚|晚上)?\s*(\d{1,2}|[零一二两三四五六七八九十]{1,3})\s*[点點时](半|(\d{1,2})分?)?",
    )
});

static AMOUNT_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(HK\$|US\$|\$|€|£|¥|￥)\s?(\d[\d,]*(?:\.\d{1,2})?)"));
static AMOUNT_SUFFIX: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)(\d[\d,]*(?:\.\d{1,2})?)\s?(usd|eur|gbp|cny|rmb|hkd|jpy|dollars?|bucks|euros?|pounds?|yuan|元|块|美元|欧元|英镑|人民币|港币|日元)",
    )
});

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| re(r"\+?\(?\d[\d\s().-]{5,18}\d"));
static LAST4: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)(?:ending(?:\s+(?:in|with))?|ends\s+(?:in|with)|last\s+(?:four|4)(?:\s+digits)?(?:\s+(?:are|is))?:?|尾号(?:是|为)?|末四位(?:是|为)?|后四位(?:是|为)?)\s*(\d{4})\b",
    )
});
static BARE4: LazyLock<Regex> = LazyLock::new(|| re(r"^\D*(\d{4})\D*$"));

/// Extract every entity found in `text`, resolving relative dates from `today`.
pub fn extract(text: &str, today: NaiveDate) -> Entities {
    Entities {
        date: date(text, today),
        time: time(text),
        amount: amount(text),
        email: EMAIL.find(text).map(|m| m.as_str().to_owned()),
        phone: phone(text),
        card_last4: LAST4.captures(text).map(|c| c[1].to_owned()),
    }
}

/// The four digits of a message that is just four digits (with any words
/// around them), as typed when asked for a card's last four.
pub fn bare_last4(text: &str) -> Option<String> {
    BARE4.captures(text.trim()).map(|c| c[1].to_owned())
}

fn month_number(name: &str) -> Option<u32> {
    let n = match &name.to_ascii_lowercase()[..3] {
        "jan" => 1,
        "feb" => 2,
        "mar" => 3,
        "apr" => 4,
        "may" => 5,
        "jun" => 6,
        "jul" => 7,
        "aug" => 8,
        "sep" => 9,
        "oct" => 10,
        "nov" => 11,
        "dec" => 12,
        _ => return None,
    };
    Some(n)
}

/// A day and month without a year: this year, or next year if already past.
fn upcoming(today: NaiveDate, month: u32, day: u32) -> Option<NaiveDate> {
    let this_year = NaiveDate::from_ymd_opt(today.year(), month, day)?;
    if this_year >= today {
        Some(this_year)
    } else {
        NaiveDate::from_ymd_opt(today.year() + 1, month, day)
    }
}

fn next_weekday(today: NaiveDate, wd: Weekday, skip_this_week: bool) -> NaiveDate {
    let ahead =
        (wd.num_days_from_monday() as i64 - today.weekday().num_days_from_monday() as i64 + 7) % 7;
    let ahead = if ahead == 0 { 7 } else { ahead };
    let mut d = today + Duration::days(ahead);
    if skip_this_week && d.iso_week() == today.iso_week() {
        d += Duration::days(7);
    }
    d
}

fn date(text: &str, today: NaiveDate) -> Option<NaiveDate> {
    if let Some(c) = ISO_DATE.captures(text) {
        return NaiveDate::from_ymd_opt(c[1].parse().ok()?, c[2].parse().ok()?, c[3].parse().ok()?);
    }
    if let Some(c) = ZH_DATE.captures(text) {
        return upcoming(today, c[1].parse().ok()?, c[2].parse().ok()?);
    }
    if let Some(c) = EN_DAY_MONTH.captures(text) {
        return upcoming(today, month_number(&c[2])?, c[1].parse().ok()?);
    }
    if let Some(c) = EN_MONTH_DAY.captures(text) {
        return upcoming(today, month_number(&c[1])?, c[2].parse().ok()?);
    }
    if let Some(c) = EN_RELATIVE.captures(text) {
        let days = match c[1].to_ascii_lowercase().as_str() {
            "today" | "tonight" => 0,
            "day after tomorrow" => 2,
            _ => 1,
        };
        return Some(today + Duration::days(days));
    }
    if let Some(c) = ZH_RELATIVE.captures(text) {
        let days = match &c[1] {
            "今天" | "今日" | "今晚" => 0,
            "明天" | "明日" => 1,
            "后天" => 2,
            _ => 3,
        };
        return Some(today + Duration::days(days));
    }
    if let Some(c) = EN_WEEKDAY.captures(text) {
        let wd: Weekday = match &c[2].to_ascii_lowercase()[..3] {
            "mon" => Weekday::Mon,
            "tue" => Weekday::Tue,
            "wed" => Weekday::Wed,
            "thu" => Weekday::Thu,
            "fri" => Weekday::Fri,
            "sat" => Weekday::Sat,
            _ => Weekday::Sun,
        };
        return Some(next_weekday(today, wd, false));
    }
    if let Some(c) = ZH_WEEKDAY.captures(text) {
        let wd = match &c[2] {
            "一" => Weekday::Mon,
            "二" => Weekday::Tue,
            "三" => Weekday::Wed,
            "四" => Weekday::Thu,
            "五" => Weekday::Fri,
            "六" => Weekday::Sat,
            _ => Weekday::Sun,
        };
        return Some(next_weekday(today, wd, c.get(1).is_some()));
    }
    None
}

fn zh_number(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let digit = |c: char| {
        "零一二三四五六七八九"
            .find(c)
            .map(|i| (i / 3) as u32)
            .or((c == '两').then_some(2))
    };
    let chars: Vec<char> = s.chars().collect();
    match chars.as_slice() {
        ['十'] => Some(10),
        ['十', d] => Some(10 + digit(*d)?),
        [t, '十'] => Some(digit(*t)? * 10),
        [t, '十', d] => Some(digit(*t)? * 10 + digit(*d)?),
        [d] => digit(*d),
        _ => None,
    }
}

fn pm(hour: u32, marker: &str) -> u32 {
    let m = marker.to_ascii_lowercase();
    if (m.starts_with('p') || m == "下午" || m == "晚上" || m == "傍晚") && hour < 12 {
        hour + 12
    } else if (m.starts_with('a') || m == "上午" || m == "早上" || m == "早晨") && hour == 12
    {
        0
    } else {
        hour
    }
}

fn time(text: &str) -> Option<NaiveTime> {
    if let Some(c) = TIME_HM.captures(text) {
        let h = pm(c[1].parse().ok()?, c.get(3).map_or("", |m| m.as_str()));
        return NaiveTime::from_hms_opt(h, c[2].parse().ok()?, 0);
    }
    if let Some(c) = TIME_H_AMPM.captures(text) {
        return NaiveTime::from_hms_opt(pm(c[1].parse().ok()?, &c[2]), 0, 0);
    }
    if let Some(c) = ZH_TIME.captures(text) {
        let hour = pm(zh_number(&c[2])?, c.get(1).map_or("", |m| m.as_str()));
        let minute = match (c.get(3).map(|m| m.as_str()), c.get(4)) {
            (Some("半"), _) => 30,
            (_, Some(m)) => m.as_str().parse().ok()?,
            _ => 0,
        };
        return NaiveTime::from_hms_opt(hour, minute, 0);
    }
    if TIME_NOON.is_match(text) {
        return NaiveTime::from_hms_opt(12, 0, 0);
    }
    if let Some(c) = TIME_OCLOCK
        .captures(text)
        .or_else(|| TIME_AT.captures(text))
    {
        let h: u32 = c[1].parse().ok()?;
        // Branch hours: "at 3" means the afternoon.
        let h = if (1..=7).contains(&h) { h + 12 } else { h };
        return NaiveTime::from_hms_opt(h, 0, 0);
    }
    None
}

fn currency_code(s: &str) -> &'static str {
    match s.to_ascii_lowercase().as_str() {
        "$" | "us$" | "usd" | "dollar" | "dollars" | "bucks" | "美元" => "USD",
        "hk$" | "hkd" | "港币" => "HKD",
        "€" | "eur" | "euro" | "euros" | "欧元" => "EUR",
        "£" | "gbp" | "pound" | "pounds" | "英镑" => "GBP",
        "jpy" | "日元" => "JPY",
        _ => "CNY", // ¥, ￥, cny, rmb, yuan, 元, 块, 人民币
    }
}

fn amount(text: &str) -> Option<Amount> {
    let (value, cur) = if let Some(c) = AMOUNT_PREFIX.captures(text) {
        (c[2].to_owned(), currency_code(&c[1]))
    } else {
        let c = AMOUNT_SUFFIX.captures(text)?;
        (c[1].to_owned(), currency_code(&c[2]))
    };
    Some(Amount {
        value: value.replace(',', ""),
        currency: cur.to_owned(),
    })
}

fn phone(text: &str) -> Option<String> {
    for m in PHONE.find_iter(text) {
        let s = m.as_str();
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        // 7–15 digits (E.164 maximum), and not something that is clearly a date.
        if (7..=15).contains(&digits.len()) && !ISO_DATE.is_match(s) {
            let plus = if s.starts_with('+') { "+" } else { "" };
            return Some(format!("{plus}{digits}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        // A Thursday.
        NaiveDate::from_ymd_opt(2026, 11, 26).unwrap()
    }

    fn d(y: i32, m: u32, day: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(y, m, day)
    }

    fn t(h: u32, m: u32) -> Option<NaiveTime> {
        NaiveTime::from_hms_opt(h, m, 0)
    }

    #[test]
    fn dates() {
        let e = |s| extract(s, today()).date;
        assert_eq!(e("today please"), d(2026, 11, 26));
        assert_eq!(e("Tomorrow"), d(2026, 11, 27));
        assert_eq!(e("the day after tomorrow"), d(2026, 11, 28));
        assert_eq!(e("明天"), d(2026, 11, 27));
        assert_eq!(e("后天上午"), d(2026, 11, 28));
        assert_eq!(e("on monday"), d(2026, 11, 30));
        assert_eq!(e("next Thursday"), d(2026, 12, 3));
        assert_eq!(e("周五"), d(2026, 11, 27));
        assert_eq!(e("下周一"), d(2026, 11, 30));
        assert_eq!(e("下周五"), d(2026, 12, 4));
        assert_eq!(e("2026-12-01"), d(2026, 12, 1));
        assert_eq!(e("12月3日"), d(2026, 12, 3));
        assert_eq!(e("3rd of December"), d(2026, 12, 3));
        assert_eq!(e("jan 5"), d(2027, 1, 5));
        assert_eq!(e("2026-13-01"), None);
        assert_eq!(e("whenever"), None);
    }

    #[test]
    fn times() {
        let e = |s| extract(s, today()).time;
        assert_eq!(e("at 10am"), t(10, 0));
        assert_eq!(e("3 pm"), t(15, 0));
        assert_eq!(e("14:30"), t(14, 30));
        assert_eq!(e("2:15 p.m."), t(14, 15));
        assert_eq!(e("at 3"), t(15, 0));
        assert_eq!(e("10 o'clock"), t(10, 0));
        assert_eq!(e("noon"), t(12, 0));
        assert_eq!(e("下午3点半"), t(15, 30));
        assert_eq!(e("上午十点"), t(10, 0));
        assert_eq!(e("10点20分"), t(10, 20));
        assert_eq!(e("25:00"), None);
    }

    #[test]
    fn amounts() {
        let e = |s| extract(s, today()).amount.map(|a| (a.value, a.currency));
        assert_eq!(e("send $1,200.50"), Some(("1200.50".into(), "USD".into())));
        assert_eq!(e("100 EUR"), Some(("100".into(), "EUR".into())));
        assert_eq!(e("£20"), Some(("20".into(), "GBP".into())));
        assert_eq!(e("转账500元"), Some(("500".into(), "CNY".into())));
        assert_eq!(e("30 dollars"), Some(("30".into(), "USD".into())));
        assert_eq!(e("no money here"), None);
    }

    #[test]
    fn phones_emails_cards() {
        let x = extract(
            "call me on +44 20 7946 0958 or mail a.b@example.com",
            today(),
        );
        assert_eq!(x.phone.as_deref(), Some("+442079460958"));
        assert_eq!(x.email.as_deref(), Some("a.b@example.com"));
        assert_eq!(
            extract("我的手机13812345678", today()).phone.as_deref(),
            Some("13812345678")
        );
        assert_eq!(extract("2026-12-01", today()).phone, None);
        assert_eq!(
            extract("card ending in 4321", today())
                .card_last4
                .as_deref(),
            Some("4321")
        );
        assert_eq!(
            extract("last four digits are 9876", today())
                .card_last4
                .as_deref(),
            Some("9876")
        );
        assert_eq!(
            extract("尾号1234", today()).card_last4.as_deref(),
            Some("1234")
        );
        assert_eq!(bare_last4(" 5678 "), Some("5678".into()));
        assert_eq!(bare_last4("it's 5678"), Some("5678".into()));
        assert_eq!(bare_last4("12345"), None);
        assert_eq!(bare_last4("1234 5678"), None);
    }
}
