//! Rule-based entities: where a rule is exact, a model is not needed.
//!
//! Dates (today, tomorrow, weekdays, 明天, 后天, 下周一, ISO dates,
//! "3 December", 12月3日, 十二月三号, 5号, 下个月5号), times (10am, 14:30,
//! 下午3点半, 明天下午三点, 三点一刻, 晚上八点四十五), amounts with currency
//! ($20, 100 EUR, 50元, 三百块, 一千五百元, 1.5万, 100美元), phone numbers
//! (mainland mobiles with or without +86 / 0086), e-mail addresses and card
//! last-four digits (ending in 4321, 尾号1234, 后四位). Full-width digits and
//! letters (１２３, ＋８６) are read as their ASCII forms first.
//! Masking personal data is [`crate::mask`]'s job.
//! Pure functions: "today" is an argument, so results are reproducible.

use std::borrow::Cow;
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
static ZH_DATE: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(\d{1,2}|[一二三四五六七八九十]{1,3})月(\d{1,2}|[一二三四五六七八九十]{1,3})[日号]")
});
/// A day of the month alone: 5号, 二十号, 下个月5号 (this month, or the next
/// when that day has passed).
static ZH_DAY: LazyLock<Regex> =
    LazyLock::new(|| re(r"(这个月|本月|下个?月)?(\d{1,2}|[一二三四五六七八九十]{1,3})[日号]"));
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
        r"(凌晨|上午|早上|早晨|中午|下午|傍晚|晚上|夜里)?\s*(\d{1,2}|[零一二两三四五六七八九十]{1,3})\s*[点點时](半|一刻|三刻|(\d{1,2}|[零一二三四五六七八九十]{1,3})分?)?",
    )
});

static AMOUNT_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(HK\$|US\$|\$|€|£|¥|￥)\s?(\d[\d,]*(?:\.\d{1,2})?)"));
static AMOUNT_SUFFIX: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)(\d[\d,]*(?:\.\d{1,2})?[百千万]?|[零〇一二两三四五六七八九十百千万]+)\s?(usd|eur|gbp|cny|rmb|hkd|jpy|dollars?|bucks|euros?|pounds?|yuan|美元|欧元|英镑|人民币|港币|日元|元|块)",
    )
});

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| re(r"\+?\(?\d[\d\s().-]{5,18}\d"));
static LAST4: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)(?:ending(?:\s+(?:in|with))?|ends\s+(?:in|with)|last\s+(?:four|4)(?:\s+digits)?(?:\s+(?:are|is))?:?|(?:尾号|尾数|(?:最后|末|后)[四4]位(?:数字?)?)(?:是|为)?)\s*(\d{4})\b",
    )
});
static BARE4: LazyLock<Regex> = LazyLock::new(|| re(r"^\D*(\d{4})\D*$"));

/// Full-width ASCII forms (ＡＢＣ１２３＋) and the ideographic space as their
/// ASCII forms, so a phone typed on a Chinese keyboard reads like any other.
fn half_width(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| ('\u{ff01}'..='\u{ff5e}').contains(&c) || c == '\u{3000}')
    {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
                '\u{3000}' => ' ',
                _ => c,
            })
            .collect(),
    )
}

/// Extract every entity found in `text`, resolving relative dates from `today`.
pub fn extract(text: &str, today: NaiveDate) -> Entities {
    let text = &*half_width(text);
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
        return upcoming(today, zh_number(&c[1])?, zh_number(&c[2])?);
    }
    if let Some(d) = zh_day(text, today) {
        return Some(d);
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

/// 5号, 下个月5号: not 3号线 (a metro line), 2号楼, 5号窗口 and the like.
fn zh_day(text: &str, today: NaiveDate) -> Option<NaiveDate> {
    for c in ZH_DAY.captures_iter(text) {
        let end = c.get(0)?.end();
        let next = text[end..].chars().next();
        if matches!(
            next,
            Some('线' | '楼' | '窗' | '柜' | '门' | '台' | '厅' | '位' | '码')
        ) {
            continue;
        }
        let day = zh_number(&c[2])?;
        let (y, m) = (today.year(), today.month());
        let next_month = |y: i32, m: u32| if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        return match c.get(1).map(|g| g.as_str()) {
            Some(s) if s.starts_with('下') => {
                let (y, m) = next_month(y, m);
                NaiveDate::from_ymd_opt(y, m, day)
            }
            _ => match NaiveDate::from_ymd_opt(y, m, day) {
                Some(d) if d >= today => Some(d),
                _ => {
                    let (y, m) = next_month(y, m);
                    NaiveDate::from_ymd_opt(y, m, day)
                }
            },
        };
    }
    None
}

/// A Chinese or Arabic number as written in amounts: 三百, 一千五百,
/// 两万, 一千二 (1,200), 一万五 (15,000), 3千, 1.5万. Decimal text out.
fn zh_amount(s: &str) -> Option<String> {
    if let Some(rest) = s.strip_suffix(['百', '千', '万']) {
        let unit = match s.chars().last()? {
            '百' => 100.0,
            '千' => 1_000.0,
            _ => 10_000.0,
        };
        if let Ok(n) = rest.replace(',', "").parse::<f64>() {
            let v = n * unit;
            return Some(if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            });
        }
    }
    if s.chars().next()?.is_ascii_digit() {
        return Some(s.replace(',', ""));
    }
    let digit = |c: char| match c {
        '零' | '〇' => Some(0),
        '两' => Some(2),
        _ => "一二三四五六七八九".find(c).map(|i| (i / 3) as u64 + 1),
    };
    let (mut total, mut section, mut number, mut last_unit) = (0u64, 0u64, 0u64, 1u64);
    for c in s.chars() {
        if let Some(d) = digit(c) {
            number = d;
            continue;
        }
        let unit = match c {
            '十' => 10,
            '百' => 100,
            '千' => 1_000,
            '万' => 10_000,
            _ => return None,
        };
        if unit == 10_000 {
            total += (section + number) * unit;
            section = 0;
        } else {
            section += number.max(u64::from(unit == 10)) * unit;
        }
        number = 0;
        last_unit = unit;
    }
    // 一千二 is 1,200 and 一万五 is 15,000: a trailing digit after a unit of
    // a hundred or more counts in the next unit down.
    if number > 0 && last_unit >= 100 {
        number *= last_unit / 10;
    }
    let v = total + section + number;
    (v > 0).then(|| v.to_string())
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
    let afternoon = m.starts_with('p') || matches!(m.as_str(), "下午" | "晚上" | "傍晚" | "夜里");
    // 中午一点 is 13:00; 中午12点 stays noon.
    if (afternoon && hour < 12) || (m == "中午" && hour < 6) {
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
            (Some("一刻"), _) => 15,
            (Some("三刻"), _) => 45,
            (_, Some(m)) => zh_number(m.as_str())?,
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
        (c[2].replace(',', ""), currency_code(&c[1]))
    } else {
        let c = AMOUNT_SUFFIX.captures(text)?;
        (zh_amount(&c[1])?, currency_code(&c[2]))
    };
    Some(Amount {
        value,
        currency: cur.to_owned(),
    })
}

fn phone(text: &str) -> Option<String> {
    for m in PHONE.find_iter(text) {
        let s = m.as_str();
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        // 7–15 digits (E.164 maximum), and not something that is clearly a date.
        if (7..=15).contains(&digits.len()) && !ISO_DATE.is_match(s) {
            // 0086 is how mainland callers dial +86.
            if let Some(rest) = digits.strip_prefix("0086") {
                return Some(format!("+86{rest}"));
            }
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

    /// (input, expected) rows in English and Chinese.
    fn table<T: PartialEq + std::fmt::Debug>(rows: &[(&str, T)], f: impl Fn(&str) -> T) {
        let mut wrong = Vec::new();
        for (input, want) in rows {
            let got = f(input);
            if &got != want {
                wrong.push(format!("{input:?}: want {want:?}, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn dates_in_both_languages() {
        table(
            &[
                // English
                ("today please", d(2026, 11, 26)),
                ("Tomorrow", d(2026, 11, 27)),
                ("the day after tomorrow", d(2026, 11, 28)),
                ("on monday", d(2026, 11, 30)),
                ("next Thursday", d(2026, 12, 3)),
                ("2026-12-01", d(2026, 12, 1)),
                ("3rd of December", d(2026, 12, 3)),
                ("jan 5", d(2027, 1, 5)),
                ("2026-13-01", None),
                ("whenever", None),
                // Chinese
                ("明天", d(2026, 11, 27)),
                ("明天下午三点", d(2026, 11, 27)),
                ("后天上午", d(2026, 11, 28)),
                ("大后天", d(2026, 11, 29)),
                ("周五", d(2026, 11, 27)),
                ("这周五", d(2026, 11, 27)),
                ("下周一上午", d(2026, 11, 30)),
                ("下周五", d(2026, 12, 4)),
                ("星期天", d(2026, 11, 29)),
                ("12月3日", d(2026, 12, 3)),
                ("12月3号", d(2026, 12, 3)),
                ("十二月三号", d(2026, 12, 3)),
                ("一月五日", d(2027, 1, 5)),
                ("30号", d(2026, 11, 30)),
                ("5号", d(2026, 12, 5)),
                ("下个月5号", d(2026, 12, 5)),
                ("二十号上午", d(2026, 12, 20)),
                ("坐地铁3号线", None),
                ("到2号窗口", None),
                ("2月30日", None),
                ("随便哪天", None),
            ],
            |s| extract(s, today()).date,
        );
    }

    #[test]
    fn times_in_both_languages() {
        table(
            &[
                ("at 10am", t(10, 0)),
                ("3 pm", t(15, 0)),
                ("14:30", t(14, 30)),
                ("2:15 p.m.", t(14, 15)),
                ("at 3", t(15, 0)),
                ("10 o'clock", t(10, 0)),
                ("noon", t(12, 0)),
                ("25:00", None),
                ("下午3点半", t(15, 30)),
                ("明天下午三点", t(15, 0)),
                ("上午十点", t(10, 0)),
                ("10点20分", t(10, 20)),
                ("三点一刻", t(3, 15)),
                ("下午两点三刻", t(14, 45)),
                ("晚上八点四十五", t(20, 45)),
                ("中午12点", t(12, 0)),
                ("中午一点", t(13, 0)),
                ("凌晨两点", t(2, 0)),
                ("14：30", t(14, 30)),
                ("下周一上午", None),
            ],
            |s| extract(s, today()).time,
        );
    }

    #[test]
    fn amounts_in_both_languages() {
        let a = |v: &str, c: &str| Some((v.to_owned(), c.to_owned()));
        table(
            &[
                ("send $1,200.50", a("1200.50", "USD")),
                ("100 EUR", a("100", "EUR")),
                ("£20", a("20", "GBP")),
                ("30 dollars", a("30", "USD")),
                ("HK$500", a("500", "HKD")),
                ("no money here", None),
                ("转账500元", a("500", "CNY")),
                ("三百块", a("300", "CNY")),
                ("取了一千五百元", a("1500", "CNY")),
                ("一千二块钱", a("1200", "CNY")),
                ("两万块", a("20000", "CNY")),
                ("一万五人民币", a("15000", "CNY")),
                ("十块", a("10", "CNY")),
                ("3千元", a("3000", "CNY")),
                ("1.5万元", a("15000", "CNY")),
                ("100美元", a("100", "USD")),
                ("五十欧元", a("50", "EUR")),
                ("２００元", a("200", "CNY")),
                ("¥88", a("88", "CNY")),
                ("没有金额", None),
            ],
            |s| extract(s, today()).amount.map(|a| (a.value, a.currency)),
        );
    }

    #[test]
    fn phones_in_both_languages() {
        let p = |s: &str| Some(s.to_owned());
        table(
            &[
                ("call me on +44 20 7946 0958", p("+442079460958")),
                ("my number is 020 7946 0958", p("02079460958")),
                ("2026-12-01", None),
                ("我的手机13812345678", p("13812345678")),
                ("打我电话138 1234 5678", p("13812345678")),
                ("+86 138-1234-5678", p("+8613812345678")),
                ("0086 13812345678", p("+8613812345678")),
                ("手机号是１３８１２３４５６７８", p("13812345678")),
                ("尾号1234", None),
            ],
            |s| extract(s, today()).phone,
        );
    }

    #[test]
    fn card_last_four_in_both_languages() {
        let c = |s: &str| Some(s.to_owned());
        table(
            &[
                ("card ending in 4321", c("4321")),
                ("last four digits are 9876", c("9876")),
                ("it ends with 1111", c("1111")),
                ("尾号1234", c("1234")),
                ("卡号尾号是5678", c("5678")),
                ("后四位是2468", c("2468")),
                ("最后4位1357", c("1357")),
                ("尾数9999", c("9999")),
                ("尾号１２３４", c("1234")),
                ("1234", None),
            ],
            |s| extract(s, today()).card_last4,
        );
        assert_eq!(bare_last4(" 5678 "), Some("5678".into()));
        assert_eq!(bare_last4("it's 5678"), Some("5678".into()));
        assert_eq!(bare_last4("12345"), None);
        assert_eq!(bare_last4("1234 5678"), None);
    }

    #[test]
    fn emails() {
        assert_eq!(
            extract("mail a.b@example.com please", today())
                .email
                .as_deref(),
            Some("a.b@example.com")
        );
        assert_eq!(
            extract("邮箱：ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ", today())
                .email
                .as_deref(),
            Some("zhang@example.com")
        );
    }
}
