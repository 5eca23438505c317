//! One branch's opening hours, holidays and facts, checked and ready to
//! answer from.
//!
//! [`Branch::parse`] turns the operators' text form ([`BranchInfo`]) into
//! typed hours and says exactly what is wrong; the engine asks it whether the
//! branch is open at a moment, what a given day looks like, and what a fact
//! says in the visitor's language.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, NaiveDate, NaiveTime, Weekday};
use edgedesk_common::branch::{BranchInfo, FACT_NAMES, Text};
use edgedesk_common::chat::Lang;

const DAY_KEYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Holidays this far ahead are mentioned with the opening hours.
const HOLIDAY_NOTICE_DAYS: i64 = 14;

/// Opening and closing time of one day (`open < close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub open: NaiveTime,
    pub close: NaiveTime,
}

impl Span {
    pub fn contains(&self, t: NaiveTime) -> bool {
        self.open <= t && t < self.close
    }

    /// "9:00–17:00".
    pub fn text(&self) -> String {
        format!("{}–{}", hm(self.open), hm(self.close))
    }
}

/// "9:00", "13:30".
pub fn hm(t: NaiveTime) -> String {
    t.format("%-H:%M").to_string()
}

/// What a single date looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day<'a> {
    pub span: Option<Span>,
    /// The holiday's name when the date is one (may be empty).
    pub holiday: Option<&'a Text>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HolidayDay {
    span: Option<Span>,
    name: Text,
}

/// A branch's hours and facts, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    week: [Option<Span>; 7],
    holidays: BTreeMap<NaiveDate, HolidayDay>,
    facts: BTreeMap<String, Text>,
}

/// What is wrong with a branch's settings; the field is named as operators
/// write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BranchError {
    #[error("branch.hours: unknown day {0:?} (use mon, tue, wed, thu, fri, sat, sun)")]
    UnknownDay(String),
    #[error("{field}: {value:?} is not \"HH:MM-HH:MM\" (opening before closing) or \"closed\"")]
    BadHours { field: String, value: String },
    #[error("branch.holidays: {0:?} is not a date (YYYY-MM-DD)")]
    BadDate(String),
    #[error("branch.holidays: {0} is listed twice")]
    DuplicateHoliday(String),
    #[error("branch.facts: unknown fact {0:?} (known: {known})", known = FACT_NAMES.join(", "))]
    UnknownFact(String),
    #[error("branch.facts.{0}: give it in at least one language (en or zh)")]
    EmptyFact(String),
    #[error("branch.{field}: longer than {max} characters")]
    TooLong { field: String, max: usize },
}

/// Longest fact or holiday name accepted (a kiosk answer, not a brochure).
pub const MAX_TEXT_CHARS: usize = 1_000;

fn parse_span(field: &str, value: &str) -> Result<Option<Span>, BranchError> {
    let bad = || BranchError::BadHours {
        field: field.to_owned(),
        value: value.to_owned(),
    };
    let v = value.trim();
    if v.eq_ignore_ascii_case("closed") {
        return Ok(None);
    }
    let (a, b) = v.split_once(['-', '–']).ok_or_else(bad)?;
    let time = |s: &str| {
        let s = s.trim();
        if s == "24:00" {
            return NaiveTime::from_hms_opt(23, 59, 59);
        }
        NaiveTime::parse_from_str(s, "%H:%M").ok()
    };
    let (open, close) = (time(a).ok_or_else(bad)?, time(b).ok_or_else(bad)?);
    if open >= close {
        return Err(bad());
    }
    Ok(Some(Span { open, close }))
}

fn check_len(field: String, t: &Text) -> Result<(), BranchError> {
    if t.en.chars().count() > MAX_TEXT_CHARS || t.zh.chars().count() > MAX_TEXT_CHARS {
        return Err(BranchError::TooLong {
            field,
            max: MAX_TEXT_CHARS,
        });
    }
    Ok(())
}

impl Branch {
    /// Hours from the older settings: the same hours on each open day.
    pub fn uniform(opening_hour: u32, closing_hour: u32, open_days: &[Weekday]) -> Branch {
        let at = |h: u32| {
            if h >= 24 {
                NaiveTime::from_hms_opt(23, 59, 59)
            } else {
                NaiveTime::from_hms_opt(h, 0, 0)
            }
        };
        let span = at(opening_hour)
            .zip(at(closing_hour))
            .filter(|(o, c)| o < c)
            .map(|(open, close)| Span { open, close });
        let mut week = [None; 7];
        for d in open_days {
            week[d.num_days_from_monday() as usize] = span;
        }
        Branch {
            week,
            holidays: BTreeMap::new(),
            facts: BTreeMap::new(),
        }
    }

    /// Check `info`; its week replaces `fallback`'s when it names any day.
    pub fn parse(info: &BranchInfo, fallback: &Branch) -> Result<Branch, BranchError> {
        let mut week = fallback.week;
        if !info.hours.is_empty() {
            week = [None; 7];
            for (day, value) in &info.hours {
                let key = day.trim().to_ascii_lowercase();
                let i = (0..7)
                    .find(|&i| key == DAY_KEYS[i] || key == day_full(i))
                    .ok_or_else(|| BranchError::UnknownDay(day.clone()))?;
                week[i] = parse_span(&format!("branch.hours.{day}"), value)?;
            }
        }
        let mut holidays = BTreeMap::new();
        for h in &info.holidays {
            let date = NaiveDate::parse_from_str(h.date.trim(), "%Y-%m-%d")
                .map_err(|_| BranchError::BadDate(h.date.clone()))?;
            let span = parse_span(&format!("branch.holidays.{}.hours", h.date), &h.hours)?;
            check_len(format!("holidays.{}.name", h.date), &h.name)?;
            let day = HolidayDay {
                span,
                name: h.name.clone(),
            };
            if holidays.insert(date, day).is_some() {
                return Err(BranchError::DuplicateHoliday(h.date.clone()));
            }
        }
        let mut facts = BTreeMap::new();
        for (name, text) in &info.facts {
            if !FACT_NAMES.contains(&name.as_str()) {
                return Err(BranchError::UnknownFact(name.clone()));
            }
            if text.en.trim().is_empty() && text.zh.trim().is_empty() {
                return Err(BranchError::EmptyFact(name.clone()));
            }
            check_len(format!("facts.{name}"), text)?;
            facts.insert(
                name.clone(),
                Text {
                    en: text.en.trim().to_owned(),
                    zh: text.zh.trim().to_owned(),
                },
            );
        }
        Ok(Branch {
            week,
            holidays,
            facts,
        })
    }

    /// The hours and holiday of `date`.
    pub fn on(&self, date: NaiveDate) -> Day<'_> {
        match self.holidays.get(&date) {
            Some(h) => Day {
                span: h.span,
                holiday: Some(&h.name),
            },
            None => Day {
                span: self.week[date.weekday().num_days_from_monday() as usize],
                holiday: None,
            },
        }
    }

    /// Whether the branch is open on `date` at `time`.
    pub fn open_at(&self, date: NaiveDate, time: NaiveTime) -> bool {
        self.on(date).span.is_some_and(|s| s.contains(time))
    }

    /// The first date after `date` (within two weeks) the branch opens.
    pub fn next_open_after(&self, date: NaiveDate) -> Option<(NaiveDate, Span)> {
        (1..=HOLIDAY_NOTICE_DAYS)
            .map(|n| date + Duration::days(n))
            .find_map(|d| self.on(d).span.map(|s| (d, s)))
    }

    /// Weekdays the branch opens, Monday first.
    pub fn open_days(&self) -> Vec<Weekday> {
        (0..7u8)
            .filter(|&i| self.week[i as usize].is_some())
            .filter_map(|i| Weekday::try_from(i).ok())
            .collect()
    }

    /// The hours most open days have (what "we're open 9:00 to 17:00" means
    /// when a day is not known).
    pub fn usual(&self) -> Option<Span> {
        let mut counts: Vec<(Span, usize)> = Vec::new();
        for s in self.week.iter().flatten() {
            match counts.iter_mut().find(|(c, _)| c == s) {
                Some((_, n)) => *n += 1,
                None => counts.push((*s, 1)),
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(s, _)| s)
    }

    /// The week in words: "Monday to Friday 9:00–17:00, Saturday 10:00–13:00".
    pub fn week_text(&self, lang: Lang) -> String {
        // Runs of consecutive days with the same hours.
        let mut runs: Vec<(usize, usize, Span)> = Vec::new();
        for (i, s) in self.week.iter().enumerate() {
            let Some(s) = s else { continue };
            match runs.last_mut() {
                Some((_, end, span)) if *end + 1 == i && span == s => *end = i,
                _ => runs.push((i, i, *s)),
            }
        }
        let sep = match lang {
            Lang::En => ", ",
            Lang::Zh => "，",
        };
        runs.iter()
            .map(|&(a, b, s)| {
                let days = match (a == b, lang) {
                    (true, _) => day_name(a, lang).to_owned(),
                    (false, Lang::En) => format!("{} to {}", day_name(a, lang), day_name(b, lang)),
                    (false, Lang::Zh) => format!("{}至{}", day_name(a, lang), day_name(b, lang)),
                };
                format!("{days} {}", s.text())
            })
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// Holidays from `today` on, within two weeks, in words ("" if none).
    pub fn upcoming_holidays(&self, today: NaiveDate, lang: Lang) -> String {
        let end = today + Duration::days(HOLIDAY_NOTICE_DAYS);
        self.holidays
            .range(today..=end)
            .map(|(d, h)| {
                let day = Day {
                    span: h.span,
                    holiday: Some(&h.name),
                };
                date_sentence(*d, &day, lang)
            })
            .collect::<Vec<_>>()
            .join(match lang {
                Lang::En => " ",
                Lang::Zh => "",
            })
    }

    /// A fact in `lang`, else in the other language.
    pub fn fact(&self, name: &str, lang: Lang) -> Option<&str> {
        let t = self.facts.get(name)?;
        let (first, other) = match lang {
            Lang::En => (&t.en, &t.zh),
            Lang::Zh => (&t.zh, &t.en),
        };
        Some(if first.is_empty() { other } else { first })
    }
}

fn day_full(i: usize) -> &'static str {
    [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ][i]
}

/// A weekday's name (Monday = 0).
pub fn day_name(i: usize, lang: Lang) -> &'static str {
    match lang {
        Lang::En => [
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
        ][i],
        Lang::Zh => ["周一", "周二", "周三", "周四", "周五", "周六", "周日"][i],
    }
}

/// A holiday's name in `lang`, else the other language, else nothing.
fn holiday_name(t: &Text, lang: Lang) -> &str {
    let (first, other) = match lang {
        Lang::En => (&t.en, &t.zh),
        Lang::Zh => (&t.zh, &t.en),
    };
    if first.is_empty() { other } else { first }
}

/// "Friday 25 December (Christmas Day): closed." / "12月25日（周五，圣诞节）不营业。"
pub fn date_sentence(date: NaiveDate, day: &Day<'_>, lang: Lang) -> String {
    let wd = day_name(date.weekday().num_days_from_monday() as usize, lang);
    let name = day.holiday.map(|t| holiday_name(t, lang)).unwrap_or("");
    match lang {
        Lang::En => {
            let label = date.format("%-d %B");
            let name = if name.is_empty() {
                String::new()
            } else {
                format!(" ({name})")
            };
            match day.span {
                Some(s) => format!("{wd} {label}{name}: open {}.", s.text()),
                None => format!("{wd} {label}{name}: closed."),
            }
        }
        Lang::Zh => {
            let label = format!("{}月{}日", date.month(), date.day());
            let inner = if name.is_empty() {
                wd.to_owned()
            } else {
                format!("{wd}，{name}")
            };
            match day.span {
                Some(s) => format!("{label}（{inner}）营业 {}。", s.text()),
                None => format!("{label}（{inner}）不营业。"),
            }
        }
    }
}
