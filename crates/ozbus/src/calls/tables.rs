//! The outcome tables: dialing cycle outcomes (RE) with their categories, agent outcomes (AO) with
//! the RE each maps to, and how an outcome is classed (success / failure / management).
//!
//! Owns: the default tables of `spec/outcomes.md`, the `[outcomes]` configuration section and its
//! validation, and the classification rule. Never: call records, message handling, I/O. The tables
//! are read-only once built; the call book only asks questions of them.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::OutcomeClass;

/// The category of a dialing cycle outcome (outcomes.md, "Outcome categories").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    NotMade,
    Abandoned,
    HostInterrupt,
    TimedOut,
    Busy,
    LiveCall,
    NoAnswer,
    FaxModem,
    AnsMachine,
    Other,
    CPartyHangup,
    FastBusy,
    PlannedNotMade,
    AgentAmsMachine,
    InboundDrop,
    InboundAbandon,
}

impl Category {
    /// Every category, in the order (and so with the numbers) of outcomes.md.
    pub const ALL: [Category; 16] = [
        Category::NotMade,
        Category::Abandoned,
        Category::HostInterrupt,
        Category::TimedOut,
        Category::Busy,
        Category::LiveCall,
        Category::NoAnswer,
        Category::FaxModem,
        Category::AnsMachine,
        Category::Other,
        Category::CPartyHangup,
        Category::FastBusy,
        Category::PlannedNotMade,
        Category::AgentAmsMachine,
        Category::InboundDrop,
        Category::InboundAbandon,
    ];

    /// The category's number in outcomes.md (1..16).
    pub fn number(self) -> u8 {
        // ALL is in numeric order and holds every variant, so the search always succeeds.
        Category::ALL
            .iter()
            .position(|c| *c == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// Categories an agent may not give a call it was connected to (TC): they describe calls that
    /// never reached anyone (outcomes.md, rules for TC).
    pub fn forbidden_for_launched_call(self) -> bool {
        matches!(
            self,
            Category::NotMade
                | Category::Abandoned
                | Category::HostInterrupt
                | Category::TimedOut
                | Category::PlannedNotMade
                | Category::InboundDrop
                | Category::InboundAbandon
        )
    }

    /// Success under classification by category.
    pub fn is_success(self) -> bool {
        matches!(self, Category::LiveCall | Category::AgentAmsMachine)
    }
}

/// How outcomes are split into success and failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// By the path of the call: TC is success, everything else ozbus closes is failure.
    #[default]
    Path,
    /// By the category of the RE: livecall and agentamsmachine are success.
    Category,
}

/// One dialing cycle outcome (an RE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialingOutcome {
    pub name: String,
    pub category: Category,
    /// Produced only by ozbus itself; the telephony layer may not send it as CA (EC 406).
    pub generated: bool,
}

/// One agent outcome (an AO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentOutcome {
    pub name: String,
    /// The dialing cycle outcome it maps to: the RE of the OZ.
    pub re: u16,
}

/// The outcome tables in force, and the options that go with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeTables {
    /// Unknown CA (EC 406), RE (UO: EC 406) and AO (EC 407) are refused instead of accepted.
    pub strict: bool,
    pub classification: Classification,
    dialing: BTreeMap<u16, DialingOutcome>,
    agent: BTreeMap<u16, AgentOutcome>,
}

/// Largest RE (CA, RE are `int 0..999`).
pub const MAX_RE: u16 = 999;
/// Largest AO (`int 0..9999`).
pub const MAX_AO: u16 = 9999;
/// The RE a live agent outcome gets when its AO is not in the table (non-strict tables).
pub const RE_USER_DEFINED_LIVE: u16 = 10;
/// REs ozbus writes itself (RN, CE expiry, BD+DD; call timeout), so they must stay `generated`.
const RE_NOT_MADE: u16 = 0;
const RE_TIMED_OUT: u16 = 9;

/// outcomes.md, "Default dialing cycle outcomes": (RE, name, category, generated).
const DEFAULT_DIALING: &[(u16, &str, Category, bool)] = &[
    (0, "not made", Category::NotMade, true),
    (1, "busy", Category::Busy, false),
    (2, "no answer", Category::NoAnswer, false),
    (3, "fax", Category::FaxModem, false),
    (4, "modem", Category::FaxModem, false),
    (5, "answering machine", Category::AnsMachine, false),
    (
        6,
        "call failure (network load, off-hook, dead line)",
        Category::Other,
        false,
    ),
    (
        7,
        "abandoned (switch-determined routing only)",
        Category::Abandoned,
        false,
    ),
    (
        8,
        "interrupted by the telephony layer",
        Category::HostInterrupt,
        false,
    ),
    (9, "timed out", Category::TimedOut, true),
    (10, "connected (live call)", Category::LiveCall, false),
    (20, "unobtainable", Category::Other, false),
    (21, "out of order", Category::Other, false),
    (22, "number changed", Category::Other, false),
    (23, "incoming calls barred", Category::Other, false),
    (24, "call rejected", Category::Other, false),
    (25, "not in use", Category::Other, false),
    (26, "fast busy", Category::FastBusy, false),
    (27, "no information (no SIT tones)", Category::Other, false),
    (30, "other", Category::Other, false),
    (
        31,
        "called party hung up before an agent was connected",
        Category::CPartyHangup,
        false,
    ),
    (
        32,
        "agent for an agent-specific callback not logged in",
        Category::Other,
        false,
    ),
    (
        33,
        "answer machine, message left",
        Category::AgentAmsMachine,
        false,
    ),
    (
        34,
        "answering machine (agent detected)",
        Category::AgentAmsMachine,
        false,
    ),
    (
        98,
        "do not call, all campaigns of the tenant",
        Category::Other,
        false,
    ),
    (99, "do not call, this campaign", Category::Other, false),
];

/// outcomes.md, "Default agent outcomes": (AO, name, RE).
const DEFAULT_AGENT: &[(u16, &str, u16)] = &[
    (0, "live call, unspecified", 10),
    (1, "answer machine", 34),
    (2, "auto attendant", 30),
    (3, "fax machine", 3),
    (4, "modem", 4),
    (5, "unknown machine", 30),
    (6, "other non-live", 30),
    (33, "answer machine, left message", 33),
    (101, "reschedule", 10),
    (102, "refusal", 10),
    (103, "wrong number", 10),
    (104, "wrong person", 10),
    (105, "commitment (sale, promise to pay)", 10),
    (106, "do not call, this campaign", 99),
    (107, "do not call ever", 98),
    (120, "other live", 10),
    (200, "not made (agent declined a preview)", 0),
];

impl Default for OutcomeTables {
    fn default() -> Self {
        OutcomeTables {
            strict: false,
            classification: Classification::Path,
            dialing: DEFAULT_DIALING
                .iter()
                .map(|&(re, name, category, generated)| {
                    let outcome = DialingOutcome {
                        name: name.to_owned(),
                        category,
                        generated,
                    };
                    (re, outcome)
                })
                .collect(),
            agent: DEFAULT_AGENT
                .iter()
                .map(|&(ao, name, re)| {
                    let outcome = AgentOutcome {
                        name: name.to_owned(),
                        re,
                    };
                    (ao, outcome)
                })
                .collect(),
        }
    }
}

impl OutcomeTables {
    /// The dialing cycle outcome of an RE, if the table has it.
    pub fn dialing(&self, re: u16) -> Option<&DialingOutcome> {
        self.dialing.get(&re)
    }

    /// The agent outcome of an AO, if the table has it.
    pub fn agent(&self, ao: u16) -> Option<&AgentOutcome> {
        self.agent.get(&ao)
    }

    /// The RE an agent outcome gives: the table's mapping, or RE 10 (a user-defined live
    /// outcome) for an AO the table does not know; under strict tables an unknown AO is EC 407.
    pub fn agent_reason(&self, ao: u16) -> Result<u16, sdmp::Rejection> {
        match self.agent(ao) {
            Some(outcome) => Ok(outcome.re),
            None if self.strict => Err(sdmp::Rejection::new(
                sdmp::ErrorCode::AgentOutcomeNotAllowed,
                format!("AO {ao} is not in the outcome table"),
            )),
            None => Ok(RE_USER_DEFINED_LIVE),
        }
    }

    /// Every dialing cycle outcome, by RE.
    pub fn dialing_outcomes(&self) -> impl Iterator<Item = (u16, &DialingOutcome)> {
        self.dialing.iter().map(|(re, outcome)| (*re, outcome))
    }

    /// Every agent outcome, by AO.
    pub fn agent_outcomes(&self) -> impl Iterator<Item = (u16, &AgentOutcome)> {
        self.agent.iter().map(|(ao, outcome)| (*ao, outcome))
    }

    /// The default tables, then each configured entry added, or replacing the entry of its code.
    pub fn from_config(config: &OutcomesConfig) -> Result<OutcomeTables, TablesError> {
        let mut tables = OutcomeTables {
            strict: config.strict,
            classification: config.classification,
            ..OutcomeTables::default()
        };

        let mut seen = BTreeSet::new();
        for entry in &config.dialing {
            if entry.code > MAX_RE {
                return Err(TablesError::DialingCodeOutOfRange(entry.code));
            }
            if !seen.insert(entry.code) {
                return Err(TablesError::DuplicateDialingCode(entry.code));
            }
            // ozbus keeps writing RE 0 and 9 whatever the table says; letting the telephony layer
            // send them too would make ozbus's own outcomes indistinguishable from reported ones.
            if matches!(entry.code, RE_NOT_MADE | RE_TIMED_OUT) && !entry.generated {
                return Err(TablesError::MustStayGenerated(entry.code));
            }
            let outcome = DialingOutcome {
                name: entry.name.clone(),
                category: entry.category,
                generated: entry.generated,
            };
            tables.dialing.insert(entry.code, outcome);
        }

        let mut seen = BTreeSet::new();
        for entry in &config.agent {
            if entry.code > MAX_AO {
                return Err(TablesError::AgentCodeOutOfRange(entry.code));
            }
            if !seen.insert(entry.code) {
                return Err(TablesError::DuplicateAgentCode(entry.code));
            }
            // Checked against the final dialing table, so an agent entry may map to an RE that
            // the same configuration adds.
            if !tables.dialing.contains_key(&entry.re) {
                return Err(TablesError::UnknownReason {
                    ao: entry.code,
                    re: entry.re,
                });
            }
            let outcome = AgentOutcome {
                name: entry.name.clone(),
                re: entry.re,
            };
            tables.agent.insert(entry.code, outcome);
        }
        Ok(tables)
    }

    /// The class of an outcome that came by `path` (success for TC, failure for what the
    /// telephony layer or ozbus closed, management for UO) with dialing cycle outcome `re`.
    pub fn class_of(&self, path: OutcomeClass, re: u16) -> OutcomeClass {
        match (self.classification, path) {
            (_, OutcomeClass::Management) | (Classification::Path, _) => path,
            (Classification::Category, _) => {
                // An RE outside the table (non-strict CF) has no category: it cannot claim to be
                // a live call, so it is a failure.
                let success = self.dialing(re).is_some_and(|d| d.category.is_success());
                if success {
                    OutcomeClass::Success
                } else {
                    OutcomeClass::Failure
                }
            }
        }
    }
}

/// The `[outcomes]` section of the TOML config file.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    pub strict: bool,
    pub classification: Classification,
    pub dialing: Vec<DialingEntry>,
    pub agent: Vec<AgentEntry>,
}

/// A `[[outcomes.dialing]]` entry: adds an RE, or replaces the default entry of that RE.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialingEntry {
    pub code: u16,
    pub name: String,
    pub category: Category,
    #[serde(default)]
    pub generated: bool,
}

/// An `[[outcomes.agent]]` entry: adds an AO, or replaces the default entry of that AO.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    pub code: u16,
    pub name: String,
    pub re: u16,
}

/// Why the `[outcomes]` section cannot be turned into tables.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TablesError {
    #[error("dialing outcome code {0} is out of range (RE is 0..999)")]
    DialingCodeOutOfRange(u16),
    #[error("agent outcome code {0} is out of range (AO is 0..9999)")]
    AgentCodeOutOfRange(u16),
    #[error("dialing outcome code {0} is configured twice")]
    DuplicateDialingCode(u16),
    #[error("agent outcome code {0} is configured twice")]
    DuplicateAgentCode(u16),
    #[error("agent outcome {ao} maps to RE {re}, which is not in the dialing outcome table")]
    UnknownReason { ao: u16, re: u16 },
    #[error("dialing outcome {0} is produced by ozbus itself and must keep `generated = true`")]
    MustStayGenerated(u16),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> OutcomesConfig {
        #[derive(serde::Deserialize)]
        struct File {
            outcomes: OutcomesConfig,
        }
        toml::from_str::<File>(text).unwrap().outcomes
    }

    /// outcomes.md copied row by row, independently of DEFAULT_DIALING, so that a typo in either
    /// shows up here.
    #[test]
    fn default_tables_are_those_of_outcomes_md() {
        use Category::*;
        let dialing: &[(u16, &str, Category, bool)] = &[
            (0, "not made", NotMade, true),
            (1, "busy", Busy, false),
            (2, "no answer", NoAnswer, false),
            (3, "fax", FaxModem, false),
            (4, "modem", FaxModem, false),
            (5, "answering machine", AnsMachine, false),
            (
                6,
                "call failure (network load, off-hook, dead line)",
                Other,
                false,
            ),
            (
                7,
                "abandoned (switch-determined routing only)",
                Abandoned,
                false,
            ),
            (
                8,
                "interrupted by the telephony layer",
                HostInterrupt,
                false,
            ),
            (9, "timed out", TimedOut, true),
            (10, "connected (live call)", LiveCall, false),
            (20, "unobtainable", Other, false),
            (21, "out of order", Other, false),
            (22, "number changed", Other, false),
            (23, "incoming calls barred", Other, false),
            (24, "call rejected", Other, false),
            (25, "not in use", Other, false),
            (26, "fast busy", FastBusy, false),
            (27, "no information (no SIT tones)", Other, false),
            (30, "other", Other, false),
            (
                31,
                "called party hung up before an agent was connected",
                CPartyHangup,
                false,
            ),
            (
                32,
                "agent for an agent-specific callback not logged in",
                Other,
                false,
            ),
            (33, "answer machine, message left", AgentAmsMachine, false),
            (
                34,
                "answering machine (agent detected)",
                AgentAmsMachine,
                false,
            ),
            (98, "do not call, all campaigns of the tenant", Other, false),
            (99, "do not call, this campaign", Other, false),
        ];
        let agent: &[(u16, &str, u16)] = &[
            (0, "live call, unspecified", 10),
            (1, "answer machine", 34),
            (2, "auto attendant", 30),
            (3, "fax machine", 3),
            (4, "modem", 4),
            (5, "unknown machine", 30),
            (6, "other non-live", 30),
            (33, "answer machine, left message", 33),
            (101, "reschedule", 10),
            (102, "refusal", 10),
            (103, "wrong number", 10),
            (104, "wrong person", 10),
            (105, "commitment (sale, promise to pay)", 10),
            (106, "do not call, this campaign", 99),
            (107, "do not call ever", 98),
            (120, "other live", 10),
            (200, "not made (agent declined a preview)", 0),
        ];
        let tables = OutcomeTables::default();
        assert!(!tables.strict);
        assert_eq!(tables.classification, Classification::Path);
        let got: Vec<_> = tables
            .dialing_outcomes()
            .map(|(re, d)| (re, d.name.as_str(), d.category, d.generated))
            .collect();
        assert_eq!(got, dialing);
        let got: Vec<_> = tables
            .agent_outcomes()
            .map(|(ao, a)| (ao, a.name.as_str(), a.re))
            .collect();
        assert_eq!(got, agent);
        assert_eq!(tables.dialing(11), None);
        assert_eq!(tables.agent(7), None);
        assert_eq!(tables.agent(200).map(|a| a.re), Some(0));
    }

    #[test]
    fn category_names_and_numbers_are_those_of_outcomes_md() {
        let names = [
            "notmade",
            "abandoned",
            "hostinterrupt",
            "timedout",
            "busy",
            "livecall",
            "noanswer",
            "faxmodem",
            "ansmachine",
            "other",
            "cpartyhangup",
            "fastbusy",
            "plannednotmade",
            "agentamsmachine",
            "inbounddrop",
            "inboundabandon",
        ];
        #[derive(serde::Deserialize, serde::Serialize)]
        struct One {
            c: Category,
        }
        for (i, (category, name)) in Category::ALL.iter().zip(names).enumerate() {
            assert_eq!(usize::from(category.number()), i + 1);
            let text = toml::to_string(&One { c: *category }).unwrap();
            assert_eq!(text.trim(), format!("c = \"{name}\""));
            let back: One = toml::from_str(&text).unwrap();
            assert_eq!(back.c, *category);
        }
    }

    #[test]
    fn an_empty_section_gives_the_defaults() {
        let tables = OutcomeTables::from_config(&OutcomesConfig::default()).unwrap();
        assert_eq!(tables, OutcomeTables::default());
        assert_eq!(
            OutcomeTables::from_config(&config("[outcomes]\n")).unwrap(),
            OutcomeTables::default()
        );
    }

    #[test]
    fn config_adds_codes_replaces_names_and_sets_options() {
        let cfg = config(
            r#"
            [outcomes]
            strict = true
            classification = "category"

            [[outcomes.dialing]]
            code = 40
            name = "voicemail box full"
            category = "ansmachine"

            [[outcomes.dialing]]
            code = 1
            name = "engaged"
            category = "busy"

            [[outcomes.dialing]]
            code = 9
            name = "left open too long"
            category = "timedout"
            generated = true

            [[outcomes.agent]]
            code = 150
            name = "voicemail full"
            re = 40

            [[outcomes.agent]]
            code = 0
            name = "live"
            re = 10
            "#,
        );
        let tables = OutcomeTables::from_config(&cfg).unwrap();
        assert!(tables.strict);
        assert_eq!(tables.classification, Classification::Category);
        let added = DialingOutcome {
            name: "voicemail box full".into(),
            category: Category::AnsMachine,
            generated: false,
        };
        assert_eq!(tables.dialing(40), Some(&added));
        assert_eq!(tables.dialing(1).map(|d| d.name.as_str()), Some("engaged"));
        assert_eq!(tables.dialing(9).map(|d| d.generated), Some(true));
        assert_eq!(tables.agent(150).map(|a| a.re), Some(40));
        assert_eq!(tables.agent(0).map(|a| a.name.as_str()), Some("live"));
        // Untouched rows keep their defaults.
        assert_eq!(tables.dialing(2), OutcomeTables::default().dialing(2));
        assert_eq!(tables.agent(200), OutcomeTables::default().agent(200));
        assert_eq!(tables.dialing_outcomes().count(), DEFAULT_DIALING.len() + 1);
    }

    #[test]
    fn config_errors() {
        let dialing = |code, generated| OutcomesConfig {
            dialing: vec![DialingEntry {
                code,
                name: "x".into(),
                category: Category::Other,
                generated,
            }],
            ..OutcomesConfig::default()
        };
        let agent = |codes: &[(u16, u16)]| OutcomesConfig {
            agent: codes
                .iter()
                .map(|&(code, re)| AgentEntry {
                    code,
                    name: "y".into(),
                    re,
                })
                .collect(),
            ..OutcomesConfig::default()
        };
        let err = |c: &OutcomesConfig| OutcomeTables::from_config(c).unwrap_err();
        assert!(OutcomeTables::from_config(&dialing(999, false)).is_ok());
        assert_eq!(
            err(&dialing(1000, false)),
            TablesError::DialingCodeOutOfRange(1000)
        );
        assert_eq!(err(&dialing(0, false)), TablesError::MustStayGenerated(0));
        assert_eq!(err(&dialing(9, false)), TablesError::MustStayGenerated(9));
        assert!(OutcomeTables::from_config(&agent(&[(9999, 10)])).is_ok());
        assert_eq!(
            err(&agent(&[(10000, 10)])),
            TablesError::AgentCodeOutOfRange(10000)
        );
        assert_eq!(
            err(&agent(&[(150, 11)])),
            TablesError::UnknownReason { ao: 150, re: 11 }
        );
        assert_eq!(
            err(&agent(&[(150, 10), (150, 30)])),
            TablesError::DuplicateAgentCode(150)
        );
        let mut twice = dialing(40, false);
        twice.dialing.push(twice.dialing[0].clone());
        assert_eq!(err(&twice), TablesError::DuplicateDialingCode(40));

        // Unknown keys and unknown categories are refused by the parser.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct File {
            outcomes: OutcomesConfig,
        }
        assert!(toml::from_str::<File>("[outcomes]\nstrictly = true\n").is_err());
        assert!(toml::from_str::<File>("[outcomes]\nclassification = \"x\"\n").is_err());
        let bad_category = "[[outcomes.dialing]]\ncode = 40\nname = \"n\"\ncategory = \"live\"\n";
        assert!(toml::from_str::<File>(bad_category).is_err());
    }

    #[test]
    fn classification_by_path_and_by_category() {
        use OutcomeClass::*;
        let mut tables = OutcomeTables::default();
        assert_eq!(tables.class_of(Success, 34), Success);
        assert_eq!(tables.class_of(Success, 3), Success);
        assert_eq!(tables.class_of(Failure, 10), Failure);
        assert_eq!(tables.class_of(Management, 10), Management);

        tables.classification = Classification::Category;
        assert_eq!(tables.class_of(Success, 34), Success);
        assert_eq!(tables.class_of(Success, 33), Success);
        assert_eq!(tables.class_of(Success, 3), Failure);
        assert_eq!(tables.class_of(Failure, 10), Success);
        assert_eq!(tables.class_of(Failure, 500), Failure);
        assert_eq!(tables.class_of(Management, 0), Management);
        for category in Category::ALL {
            let success = matches!(category, Category::LiveCall | Category::AgentAmsMachine);
            assert_eq!(category.is_success(), success, "{category:?}");
        }
    }
}
