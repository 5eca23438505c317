//! The knowledge base: what the bot says, per intent and language.
//!
//! A TOML text operators edit (the built-in one is `dialog/kb/default.toml`;
//! the node reads a configured file and hands its text to [`KnowledgeBase::parse`]):
//! `[prompts.NAME]` holds the engine's own lines, `[intents.LABEL]` one answer
//! per intent with optional quick replies. Every prompt the engine uses must
//! exist in both languages; loading checks that and names what is missing.

use std::collections::BTreeMap;

use edgedesk_common::chat::Lang;
use serde::Deserialize;

/// The built-in knowledge base.
pub const DEFAULT_KB: &str = include_str!("../kb/default.toml");

/// Prompts the engine needs. Placeholders in braces are filled in at run time.
pub const REQUIRED_PROMPTS: &[&str] = &[
    "welcome",
    "rephrase",
    "offer_human",
    "out_of_scope",
    "no_answer",
    "escalate_waiting",
    "escalate_unavailable",
    "waiting_still",
    "queue_position",
    "queue_offer",
    "button_keep_waiting",
    "contact_ask_name",
    "contact_ask_contact",
    "contact_reprompt_contact",
    "contact_ask_message",
    "contact_done",
    "contact_declined",
    "cancelled",
    "nothing_to_cancel",
    "flow_gave_up",
    "appt_ask_date",
    "appt_reprompt_date",
    "appt_date_past",
    "appt_ask_time",
    "appt_reprompt_time",
    "appt_time_closed",
    "appt_confirm",
    "appt_reprompt_confirm",
    "appt_done",
    "card_ask_last4",
    "card_reprompt_last4",
    "card_confirm",
    "card_reprompt_confirm",
    "card_done",
    "goodbye",
    "new_conversation",
    "button_agent",
    "button_try_again",
    "button_leave_message",
    "button_no_thanks",
    "button_yes",
    "button_no",
    "button_cancel",
    "agent_joined",
    "agent_left",
    "agent_closed",
    "rating_thanks",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Localized {
    pub en: String,
    pub zh: String,
}

impl Localized {
    pub fn get(&self, lang: Lang) -> &str {
        match lang {
            Lang::En => &self.en,
            Lang::Zh => &self.zh,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizedList {
    #[serde(default)]
    pub en: Vec<String>,
    #[serde(default)]
    pub zh: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub en: String,
    pub zh: String,
    /// Suggested follow-ups; tapping one sends its text as a message.
    #[serde(default)]
    pub quick_replies: LocalizedList,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeBase {
    pub prompts: BTreeMap<String, Localized>,
    pub intents: BTreeMap<String, Answer>,
    /// Intents whose answer here differs from the built-in one: the
    /// branch's own, which a released answer does not replace.
    #[serde(skip)]
    edited: std::collections::BTreeSet<String>,
}

/// Answers a model bundle carries (`answers.toml`: `[intents.NAME]` with
/// `en`, `zh` and optional `quick_replies`): for intents the learning loop
/// taught it, and the supervisors' edits (knowledge-base releases). They
/// replace the built-in answers; a branch's own answer (one its knowledge
/// base changed from the built-in) wins over them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelAnswers(pub BTreeMap<String, Answer>);

/// The file name in a bundle.
pub const MODEL_ANSWERS_FILE: &str = "answers.toml";

impl ModelAnswers {
    pub fn parse(text: &str, origin: &str) -> Result<ModelAnswers, KbError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            intents: BTreeMap<String, Answer>,
        }
        let f: File = toml::from_str(text).map_err(|e| KbError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        for (key, a) in &f.intents {
            for (lang, text) in [("en", &a.en), ("zh", &a.zh)] {
                if text.trim().is_empty() {
                    return Err(KbError::Empty {
                        path: origin.into(),
                        key: format!("intents.{key}"),
                        lang,
                    });
                }
            }
        }
        Ok(ModelAnswers(f.intents))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KbError {
    #[error("knowledge base {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("knowledge base {path} lacks prompt `{name}` (every prompt needs `en` and `zh`)")]
    MissingPrompt { path: String, name: String },
    #[error("knowledge base {path}: `{key}` is empty in language `{lang}`")]
    Empty {
        path: String,
        key: String,
        lang: &'static str,
    },
}

impl KnowledgeBase {
    pub fn builtin() -> KnowledgeBase {
        KnowledgeBase::parse(DEFAULT_KB, "built-in").expect("built-in knowledge base is valid")
    }

    pub fn parse(text: &str, origin: &str) -> Result<KnowledgeBase, KbError> {
        let mut kb: KnowledgeBase = toml::from_str(text).map_err(|e| KbError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        // `{open}` and `{close}` were whole hours ("{open}:00") before the
        // branch could open at 9:30; they are "9:30" now.
        for p in kb.prompts.values_mut() {
            for t in [&mut p.en, &mut p.zh] {
                if t.contains("{open}:00") || t.contains("{close}:00") {
                    *t = t
                        .replace("{open}:00", "{open}")
                        .replace("{close}:00", "{close}");
                }
            }
        }
        for name in REQUIRED_PROMPTS {
            if !kb.prompts.contains_key(*name) {
                return Err(KbError::MissingPrompt {
                    path: origin.into(),
                    name: (*name).into(),
                });
            }
        }
        let entries = kb
            .prompts
            .iter()
            .map(|(k, v)| (format!("prompts.{k}"), &v.en, &v.zh))
            .chain(
                kb.intents
                    .iter()
                    .map(|(k, v)| (format!("intents.{k}"), &v.en, &v.zh)),
            );
        for (key, en, zh) in entries {
            for (lang, text) in [("en", en), ("zh", zh)] {
                if text.trim().is_empty() {
                    return Err(KbError::Empty {
                        path: origin.into(),
                        key,
                        lang,
                    });
                }
            }
        }
        if text != DEFAULT_KB {
            let builtin = KnowledgeBase::builtin();
            kb.edited = kb
                .intents
                .iter()
                .filter(|(k, a)| builtin.intents.get(*k) != Some(*a))
                .map(|(k, _)| k.clone())
                .collect();
        }
        Ok(kb)
    }

    /// A prompt in `lang` with `{name}` placeholders replaced.
    pub fn prompt(&self, name: &str, lang: Lang, vars: &[(&str, &str)]) -> String {
        let mut text = self
            .prompts
            .get(name)
            .map(|p| p.get(lang).to_owned())
            .unwrap_or_else(|| name.to_owned());
        for (k, v) in vars {
            text = text.replace(&format!("{{{k}}}"), v);
        }
        text
    }

    /// Whether the knowledge base has prompt `name` (optional prompts).
    pub fn has_prompt(&self, name: &str) -> bool {
        self.prompts.contains_key(name)
    }

    pub fn answer(&self, intent: &str) -> Option<&Answer> {
        self.intents.get(intent)
    }

    /// The answer to `intent`: the branch's own (one this knowledge base
    /// changed from the built-in), else the one the model's bundle carries
    /// (a learnt intent's, or a supervisor's edit released to the fleet),
    /// else the built-in one.
    pub fn answer_with<'a>(
        &'a self,
        intent: &str,
        model_answers: Option<&'a ModelAnswers>,
    ) -> Option<&'a Answer> {
        let released = model_answers.and_then(|m| m.0.get(intent));
        match self.answer(intent) {
            Some(own) if self.edited.contains(intent) => Some(own),
            own => released.or(own),
        }
    }

    /// Labels of `model_labels` that have no answer (logged at start-up).
    pub fn missing_answers<'a>(
        &self,
        model_labels: &'a [String],
        handled: &[&str],
    ) -> Vec<&'a str> {
        model_labels
            .iter()
            .map(String::as_str)
            .filter(|l| !self.intents.contains_key(*l) && !handled.contains(l))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_answer_replaces_the_built_in_one_but_not_a_branchs_own() {
        let released = ModelAnswers::parse(
            "[intents.card_arrival]\nen = \"Released.\"\nzh = \"发布的。\"\nquick_replies = { en = [\"Track my card\"] }\n\
             [intents.queue_number]\nen = \"Take a number.\"\nzh = \"请取号。\"\n",
            "answers.toml",
        )
        .unwrap();
        let builtin = KnowledgeBase::builtin();
        let said = |kb: &KnowledgeBase, intent: &str| {
            kb.answer_with(intent, Some(&released))
                .map(|a| a.en.clone())
                .unwrap_or_default()
        };
        assert_eq!(said(&builtin, "card_arrival"), "Released.");
        assert_eq!(
            said(&builtin, "queue_number"),
            "Take a number.",
            "a learnt intent"
        );
        assert_eq!(
            builtin.answer_with("card_arrival", None).unwrap().en,
            builtin.answer("card_arrival").unwrap().en,
            "without a release, the built-in answer"
        );
        assert_ne!(
            said(&builtin, "pin_blocked"),
            "",
            "an answer nobody released"
        );
        // A branch that wrote its own card_arrival answer keeps it; its
        // other answers are the built-in ones, which a release replaces.
        let own = DEFAULT_KB.replacen("[intents.card_arrival]", "[intents.card_arrival]\nen = \"Ask at desk 3.\"\nzh = \"请到3号柜台。\"\n[intents.card_arrival_old]", 1);
        let branch = KnowledgeBase::parse(&own, "branch.toml");
        let branch = match branch {
            Ok(kb) => kb,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(said(&branch, "card_arrival"), "Ask at desk 3.");
        assert_eq!(said(&branch, "queue_number"), "Take a number.");
    }

    #[test]
    fn builtin_is_complete() {
        let kb = KnowledgeBase::builtin();
        assert!(kb.intents.len() >= 77, "{} intents", kb.intents.len());
        assert!(
            kb.prompt("appt_confirm", Lang::En, &[("date", "D"), ("time", "T")])
                .contains('D')
        );
    }

    #[test]
    fn rejects_missing_and_empty() {
        let e = KnowledgeBase::parse("[prompts]\n[intents]\n", "x").unwrap_err();
        assert!(matches!(e, KbError::MissingPrompt { .. }), "{e}");
        let mut text = DEFAULT_KB.to_owned();
        text.push_str("\n[intents.zz_test]\nen = \"\"\nzh = \"x\"\n");
        let e = KnowledgeBase::parse(&text, "x").unwrap_err();
        assert!(e.to_string().contains("intents.zz_test"), "{e}");
        assert!(matches!(
            KnowledgeBase::parse("nonsense = [", "x"),
            Err(KbError::Parse { .. })
        ));
    }
}
